"""Arrow schemas of the tables the system writes, defined once for writers, readers and tests.

Functions rather than module constants so that importing this module does not import pyarrow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emotiw.weights import FER_CLASSES

if TYPE_CHECKING:
    import pyarrow as pa

# Per-face detail rows (face modality): one row per kept face of a sampled frame.
FACE_BOX_COLUMNS: tuple[str, ...] = ("top", "right", "bottom", "left")
FACE_PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{name}" for name in FER_CLASSES)
FACE_DETAIL_COLUMNS: tuple[str, ...] = (
    "slot",
    "frame_index",
    *FACE_BOX_COLUMNS,
    *FACE_PROB_COLUMNS,
)


def face_detail_schema() -> pa.Schema:
    """Schema of the per-face table (without the clip-identifying columns the job adds)."""
    import pyarrow as pa

    fields = [pa.field("slot", pa.int16()), pa.field("frame_index", pa.int32())]
    fields += [pa.field(c, pa.int16()) for c in FACE_BOX_COLUMNS]
    fields += [pa.field(c, pa.float32()) for c in FACE_PROB_COLUMNS]
    return pa.schema(fields)
