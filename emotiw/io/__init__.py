"""Layer 1, I/O: bytes in and out, with no knowledge of tables or models.

- `storage`: fsspec / pyarrow filesystems (local, S3), streamed listing, ETags;
- `media`: decoding a video into a `Clip` (sampled frames, mono audio), with `media_guard`
  refusing inputs too large to decode safely;
- `frames`: the JPEG frames stored for model-stage modalities;
- `clip_process`: a child process per clip, so a decoder crash costs one row, not an actor;
- `labels`: VGAF-style label files;
- `weights`: the pretrained-weights registry (what each network loads, from where, checked
  by SHA-256);
- `corpus`: the synthetic sample corpus (clips with planted cues, for demos and tests).
"""

from emotiw.core.exports import lazy

__all__, __getattr__ = lazy(
    __name__,
    {
        "Clip": "media",
        "decode": "media",
        "read_labels": "labels",
        "write_labels": "labels",
        "write_sample_corpus": "corpus",
        "list_video_objects": "storage",
    },
)
