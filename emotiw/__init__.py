"""emotiw: group-video sentiment (positive / neutral / negative) at corpus scale.

The package is layered; each layer is a subpackage and imports only from the layers before it
(`tests/test_architecture.py` checks every import):

`core` -> `io` -> `tables` -> `modalities` -> `models` -> `tracking` -> `jobs` -> `cli`.

The names below are the public Python API (the jobs, their configs, the model package); they
are imported on first use, so `import emotiw` stays fast and needs neither Ray nor torch.
"""

from emotiw.core import __version__
from emotiw.core.exports import lazy

LAYERS: tuple[str, ...] = (
    "core",
    "io",
    "tables",
    "modalities",
    "models",
    "tracking",
    "jobs",
    "cli",
)

_all, __getattr__ = lazy(
    __name__,
    {
        **{
            name: "emotiw.jobs"
            for name in (
                "ExtractConfig",
                "run_extract",
                "ScoreConfig",
                "run_score",
                "EvaluateConfig",
                "run_evaluate",
                "TrainConfig",
                "run_train",
                "DemoConfig",
                "run_demo",
            )
        },
        **{
            name: "emotiw.core"
            for name in (
                "CLASS_NAMES",
                "MediaConfig",
                "StorageConfig",
                "EmotiwError",
                "ExitCode",
            )
        },
        **{name: "emotiw.models" for name in ("load_model", "PackagedModel")},
    },
)
__all__ = ["LAYERS", "__version__", *_all]
