"""Out-of-fold stacking: the FC fusion learns from the heads' hidden layers of clips those
heads did not train on.

Trained on the in-sample hidden layers (what the authors did: their FC fusion reached .78
training accuracy at epoch 1 against .61 on validation, docs/explanation/authors-models.md
bug 12), the fusion learns to trust heads by how well they fit their own training clips. Here
the training set is cut into `TrainConfig.stacking_folds` folds by source video (the
`group_by` groups, so clips of one video share a fold); for each fold every head is trained on
the other folds and computes the hidden layers of the held-out one; those out-of-fold rows
are the fusion's training set. The heads the package keeps, and the validation rows, are
those of the heads trained on the whole training set, as before. The in-sample fusion is
trained too, as variant ``<method>-in-sample``, so `evaluate` reports both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

from emotiw.jobs.train.config import TrainConfig
from emotiw.jobs.train.data import source_groups


def _fold_of(uris: np.ndarray, group_by: str, folds: int) -> np.ndarray:
    """Each clip's fold, 0..folds-1: a hash of its source-video group (its URI when the
    name has none), so a clip lands in the same fold in every run."""
    groups = source_groups(uris, group_by)
    names = groups if groups is not None else np.asarray(uris, dtype=str)
    digest = [hashlib.blake2b(str(n).encode(), digest_size=4).digest() for n in names]
    return np.asarray([int.from_bytes(d, "little") % folds for d in digest], dtype=np.int64)


def _in_fold(batch: dict[str, np.ndarray], group_by: str, folds: int, k: int, keep: bool) -> Any:
    """The rows of `batch` whose fold is `k` (`keep`) or is not."""
    hit = _fold_of(batch["uri"], group_by, folds) == k
    chosen = hit if keep else ~hit
    return {name: values[chosen] for name, values in batch.items()}


def split(cfg: TrainConfig, ds: Any, k: int) -> tuple[Any, Any]:
    """(the training rows outside fold `k`, those in it), materialised."""
    out = []
    for keep in (False, True):
        part = ds.map_batches(
            _in_fold, fn_args=(cfg.group_by, cfg.stacking_folds, k, keep), batch_format="numpy"
        )
        out.append(part.materialize())
    return out[0], out[1]


def out_of_fold_hidden(
    cfg: TrainConfig,
    train: Any,
    train_heads: Callable[[Any, int], dict[str, bytes]],
    hidden: Callable[[Any, dict[str, bytes]], Any],
) -> Any:
    """The hidden layers of every training clip from heads that did not see it: per fold,
    `train_heads(rows outside it, k)` -> head states, `hidden(rows in it, states)`."""
    parts = []
    for k in range(cfg.stacking_folds):
        fit_rows, held_out = split(cfg, train, k)
        if held_out.count() == 0:  # a fold no source video hashed into
            continue
        if fit_rows.count() == 0:
            raise ValueError(
                "stacking needs clips of at least two source videos (--group-by) in the "
                "training set; use --stacking-folds 0"
            )
        parts.append(hidden(held_out, train_heads(fit_rows, k)))
    return parts[0].union(*parts[1:]).materialize() if len(parts) > 1 else parts[0]
