"""Classification metrics of the paper's tables (accuracy, macro precision / recall / F1) and
confusion matrices; plain NumPy so evaluation needs nothing else."""

from __future__ import annotations

from typing import Any

import numpy as np

from emotiw.core.config import CLASS_NAMES


def confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """``[true, predicted]`` counts."""
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(labels, int), np.asarray(predicted, int)), 1)
    return out


def scores(
    labels: np.ndarray, probs: np.ndarray, predicted: np.ndarray | None = None
) -> dict[str, float]:
    """Accuracy, macro and support-weighted precision / recall / F1 (a class never predicted
    or never present counts 0, as scikit-learn's ``zero_division=0``) and cross-entropy."""
    labels = np.asarray(labels, int)
    probs = np.asarray(probs, np.float64)
    predicted = probs.argmax(axis=1) if predicted is None else np.asarray(predicted, int)
    cm = confusion(labels, predicted, probs.shape[1])
    tp = np.diag(cm).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / cm.sum(axis=0))
        recall = np.nan_to_num(tp / cm.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    n = max(len(labels), 1)
    picked = probs[np.arange(len(labels)), labels] if len(labels) else np.ones(1)
    support = cm.sum(axis=1) / n  # the authors' reports: averages weighted by class support
    return {
        "accuracy": float(tp.sum() / n),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "precision_weighted": float((precision * support).sum()),
        "recall_weighted": float((recall * support).sum()),
        "f1_weighted": float((f1 * support).sum()),
        "cross_entropy": float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()),
        "n": len(labels),
    }


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as a Markdown table, floats to 3 decimals as in the paper."""

    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def confusion_figure(cm: np.ndarray, title: str) -> Any:
    """A matplotlib figure of a confusion matrix (rows true, columns predicted, row shares)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if shares[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{shares[i, j]:.2f}\n({cm[i, j]})",
                ha="center",
                va="center",
                color=colour,
                fontsize=8,
            )
    fig.tight_layout()
    return fig
