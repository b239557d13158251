"""Layer 4, models: everything between a decoded clip and its class probabilities, without Ray.

- `features`: `ModalityConfigs`, a clip -> its feature row, the feature table read back as
  arrays;
- `fusion`: voting, FC early fusion and VAE fusion over any registered subset of modalities;
- `inference`: tensors, prediction, and `ClipScorer` (the model stage of a scoring run);
- `packaging`: the self-describing model package (configs, weights, provenance);
- `metrics`: accuracy, per-class scores, confusion matrices.
"""

from emotiw.core.exports import lazy

__all__, __getattr__ = lazy(
    __name__,
    {
        "ModalityConfigs": "features",
        "ClipScorer": "inference",
        "PackagedModel": "packaging",
        "load_model": "packaging",
        "save_model": "packaging",
    },
)
