"""The paper's reported figures (Tables 1-3 of *Video Sentiment Analysis in the Wild*), which
`emotiw evaluate` prints beside the measured ones. Here, in the modalities package, because
the rows are named by modality. Each figure is precision / recall / F1 on VGAF's validation
set as printed; docs/explanation/authors-models.md says what the authors' code computed (mostly
support-weighted averages; Table 1's audio row mixes weighted P/R with micro-F1, its face row
is a macro average) and which rows are invalid.
"""

from __future__ import annotations

_Figures = tuple[float, float, float]

# Table 1, one row per modality's head.
TABLE1: dict[str, _Figures] = {
    "scene": (0.547, 0.540, 0.541),
    "pose": (0.483, 0.512, 0.489),
    "audio": (0.640, 0.580, 0.577),
    "face": (0.396, 0.403, 0.348),
}
# Table 2, one row per fusion method (the `fusion.Config.method` names). The paper's
# "FC-Fusion" row came from a run without face features and with two scene models.
TABLE2: dict[str, _Figures] = {
    "hard": (0.605, 0.581, 0.576),
    "soft": (0.658, 0.620, 0.608),
    "weighted": (0.632, 0.602, 0.593),
    "fc": (0.639, 0.629, 0.626),
    "vae": (0.271, 0.369, 0.276),
}
# Table 3: the FC fusion without one modality (the row's key is the modality left out).
TABLE3_WITHOUT: dict[str, _Figures] = {
    "face": (0.641, 0.632, 0.630),  # "Aud-Sce-Pose", the paper's best (acc .632; text: 63.6%)
    "audio": (0.632, 0.629, 0.627),  # "Sce-FER-Pose": built from stale features (invalid)
    "pose": (0.641, 0.629, 0.627),  # "Sce-Aud-FER"
    "scene": (0.627, 0.602, 0.595),  # "Aud-Pose-FER"
}
INVALID = {("table3", "audio"): "invalid in the paper: stale audio+scene+face features"}


def cell(figures: _Figures | None, note: str = "") -> str:
    """A paper column cell: ``P / R / F1`` (and a note), or "-" where the paper has no row."""
    if figures is None:
        return "-"
    text = " / ".join(f"{v:.3f}" for v in figures)
    return f"{text} ({note})" if note else text


# The deployed models' training settings (`TrainConfig.schedule == "paper"`): epochs, batch
# size, the validation metric that picked the checkpoint, and early stopping on validation
# loss (patience in epochs; 0 = none). Keyed by modality, and "fusion" for FC fusion.
TRAINING: dict[str, dict[str, object]] = {
    "scene": {"epochs": 5, "batch_size": 6, "select_by": "val_loss", "patience": 0},
    "pose": {"epochs": 20, "batch_size": 64, "select_by": "val_loss", "patience": 0},
    "audio": {"epochs": 4000, "batch_size": 32, "select_by": "val_accuracy", "patience": 300},
    "face": {"epochs": 20, "batch_size": 32, "select_by": "val_loss", "patience": 0},
    "fusion": {"epochs": 30, "batch_size": 32, "select_by": "val_accuracy", "patience": 0},
}
