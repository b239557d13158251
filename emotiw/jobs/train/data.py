"""Training data as pure compute: which rows train, the split, and feature rows -> the flat
training columns that Ray Data carries to the workers (`emotiw.jobs.train.dataset` is the Ray
plumbing around these).

The heads never re-decode video: they train on the feature table's arrays. A modality with a
frozen pretrained front-end (the scene's backbone) runs it once, batch by batch, in the
preparation pool (`Modality.precompute`) and its head trains on the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from emotiw.core.config import StorageConfig
from emotiw.io.weights import WeightsConfig
from emotiw.models.features import FeatureSet, ModalityConfigs, newest_per_uri, to_feature_set

# Columns the driver reads to choose rows and split them (never the features themselves).
_KEY_COLUMNS = ["uri", "label", "error", "extracted_at", "weights"]
# Flat column names: "<modality>__<i>" for its i-th input array, "<modality>__present".
_SEP = "__"


@dataclass
class _TableKeys:
    """The rows of a feature table that training uses, chosen from its small columns only.

    Attributes:
        keys: ``uri\\nextracted_at`` of each clip's newest successful, labelled row.
        labels: their labels (for the split and the validation metrics).
        n_rows: rows in the table (errors and older rows included), for messages.
        provenance: the front-end weights the extract job recorded.
    """

    keys: np.ndarray
    labels: np.ndarray
    n_rows: int
    provenance: dict[str, str]

    def subset(self, index: np.ndarray) -> _TableKeys:
        return _TableKeys(self.keys[index], self.labels[index], self.n_rows, self.provenance)

    def __len__(self) -> int:
        return len(self.keys)


def _row_keys(uris: Any, extracted_at: Any) -> list[str]:
    """The key `_TableKeys` and `PrepareBatch` agree on (a row, not only a clip: a clip
    extracted twice has two rows and training uses the newest)."""
    return [f"{u}\n{t}" for u, t in zip(uris, extracted_at, strict=True)]


def table_keys(uri: str, storage: StorageConfig | None = None) -> _TableKeys:
    """Read `_KEY_COLUMNS` of the table at `uri` and keep each clip's newest successful,
    labelled row: bytes per clip on the driver, whatever the feature shapes."""
    import pyarrow.compute as pc

    from emotiw.io.storage import arrow_filesystem
    from emotiw.models.features import feature_schema
    from emotiw.tables.chunks import read

    fs, path = arrow_filesystem(uri, storage)
    table = read(fs, path, feature_schema(), columns=_KEY_COLUMNS)
    rows = table.take(newest_per_uri(table))
    rows = rows.filter(pc.and_(pc.is_null(rows["error"]), pc.is_valid(rows["label"])))
    when = rows["extracted_at"].cast("int64").to_pylist()
    return _TableKeys(
        np.asarray(_row_keys(rows["uri"].to_pylist(), when), dtype=object),
        rows["label"].to_numpy(zero_copy_only=False).astype(np.int64),
        table.num_rows,
        _table_provenance(rows),
    )


def recorded_front_ends(
    uris: list[str], storage: StorageConfig | None = None
) -> dict[str, dict[str, Any]]:
    """The front-end settings the extract job recorded in the feature tables at `uris`
    (`front_ends` of their successful rows); {} when none did (older tables).

    Raises:
        ValueError: the rows (or the train and validation tables) were extracted differently.
    """
    import pyarrow.compute as pc
    from pyarrow import fs as pafs

    from emotiw.core.errors import StorageError
    from emotiw.io.storage import arrow_filesystem
    from emotiw.models.features import feature_schema
    from emotiw.tables.chunks import read

    found: set[str] = set()
    for uri in uris:
        fs, path = arrow_filesystem(uri, storage)
        if fs.get_file_info(path).type == pafs.FileType.NotFound and "/" in path.strip("/"):
            raise StorageError(f"{uri}: no such feature table", reason="not_found")
        table = read(fs, path, feature_schema(), columns=["front_ends", "error"])
        ok = table.filter(pc.and_(pc.is_null(table["error"]), pc.is_valid(table["front_ends"])))
        found |= set(pc.unique(ok["front_ends"]).to_pylist())
    if len(found) > 1:
        raise ValueError(
            f"the feature tables {', '.join(uris)} were extracted with different front-end "
            f"settings ({len(found)} kinds, e.g. {sorted(found)[:2]}): re-extract one of them"
        )
    return json.loads(found.pop()) if found else {}


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): about `fraction` of each class (at least one) held out, seeded.
    With `groups` that hold more than one clip, whole groups move (clips of one source video
    never sit on both sides): groups are visited in a seeded order and one goes to
    validation while the class most of its clips have is short of its share."""
    rng = np.random.default_rng(seed)
    if groups is not None:
        names, group_of = np.unique(np.asarray(groups), return_inverse=True)
    if groups is None or len(names) == len(labels):  # one clip per group: per-clip split
        val = []
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            val.extend(idx[: max(1, round(fraction * len(idx)))] if len(idx) > 1 else [])
        val_idx = np.sort(np.asarray(val, dtype=int))
        return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx
    classes = np.unique(labels)
    want = {c: max(1, round(fraction * int((labels == c).sum()))) for c in classes}
    have = dict.fromkeys(classes, 0)
    members = [np.flatnonzero(group_of == g) for g in range(len(names))]
    chosen: list[int] = []
    for g in rng.permutation(len(names)):
        counts = np.bincount(np.searchsorted(classes, labels[members[g]]), minlength=len(classes))
        major = classes[int(counts.argmax())]
        left = len(labels) - len(chosen) - len(members[g])  # keep a training set
        if have[major] < want[major] and left > 0:
            chosen.extend(members[g].tolist())
            for c, n in zip(classes, counts, strict=True):
                have[c] += int(n)
    val_idx = np.sort(np.asarray(chosen, dtype=int))
    return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx


def source_groups(uris: np.ndarray, pattern: str) -> np.ndarray | None:
    """Each clip's source-video group: the first group of `pattern` over its file stem (the
    stem itself when it does not match); None without a pattern (per-clip split)."""
    import re

    from emotiw.io.storage import video_id

    if not pattern:
        return None
    regex = re.compile(pattern)
    stems = [video_id(str(u)) for u in uris]
    return np.asarray([(m.group(1) if (m := regex.match(s)) else s) for s in stems], dtype=str)


def _table_provenance(rows: Any) -> dict[str, str]:
    """The front-end weights recorded in the feature table (they must agree across rows)."""
    import pyarrow.compute as pc

    found: dict[str, str] = {}
    for text in set(rows.filter(pc.is_null(rows["error"]))["weights"].to_pylist()):
        for key, value in json.loads(text or "{}").items():
            if found.get(key, value) != value:
                raise ValueError(
                    f"the feature table mixes weights for {key}: {found[key]} and {value}"
                )
            found[key] = value
    return found


def flatten(data: FeatureSet, provenance: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """A FeatureSet as flat columns (one tensor column per input array)."""
    # str, not object, arrays: an empty batch must still say its columns are strings
    out: dict[str, np.ndarray] = {
        "uri": np.asarray(data.uris, dtype=str),
        "label": np.asarray(data.labels, dtype=np.int64),
        "provenance": np.asarray([json.dumps(provenance or {}, sort_keys=True)] * len(data), str),
    }
    for name, arrays in data.inputs.items():
        for i, array in enumerate(arrays):
            out[f"{name}{_SEP}{i}"] = array
        out[f"{name}{_SEP}present"] = np.asarray(data.present[name], dtype=bool)
    return out


def columns_of(modalities: tuple[str, ...], names: list[str]) -> list[str]:
    """The flat columns `modalities` need, out of `names`, and the label."""
    return ["label", *(n for n in names if n.split(_SEP)[0] in modalities and _SEP in n)]


def unflatten(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Flat columns (a numpy batch from Ray Data) -> worker arrays (``inputs``, ``present``,
    ``labels``) for every modality the batch carries."""
    inputs: dict[str, list[tuple[int, np.ndarray]]] = {}
    present: dict[str, np.ndarray] = {}
    for column, values in batch.items():
        name, sep, part = column.partition(_SEP)
        if not sep:
            continue
        if part == "present":
            present[name] = np.asarray(values, dtype=bool)
        else:
            inputs.setdefault(name, []).append((int(part), np.asarray(values)))
    ordered = {m: tuple(a for _, a in sorted(p, key=lambda x: x[0])) for m, p in inputs.items()}
    return {
        "inputs": ordered,
        "present": present,
        "labels": np.asarray(batch["label"], dtype=np.int64),
    }


class PrepareBatch:
    """Feature rows (pyarrow) -> flat training columns plus ``split``: keeps the rows
    `splits` names (row key -> "train" / "val"), reads each modality's inputs and runs
    frozen front-ends (`Modality.precompute`; models are built once per process). Ray runs it
    in a pool of actors, on GPUs when asked."""

    def __init__(
        self, configs: ModalityConfigs, weights: WeightsConfig, splits: dict[str, str]
    ) -> None:
        self.configs, self.weights, self.splits = configs, weights, splits

    def __call__(self, rows: Any) -> dict[str, np.ndarray]:
        keys = _row_keys(rows["uri"].to_pylist(), rows["extracted_at"].cast("int64").to_pylist())
        keep = np.asarray([k in self.splits for k in keys], dtype=bool)
        rows = rows.filter(keep)
        data = to_feature_set(rows, self.configs)  # (keys are successful, labelled rows)
        provenance: dict[str, str] = {}
        for spec in self.configs.specs():
            done = spec.precompute(self.configs.of(spec.name), data.inputs[spec.name], self.weights)
            if done is not None:
                data.inputs[spec.name], prov = done
                provenance.update(prov)
        out = flatten(data, provenance)
        out["split"] = np.asarray([self.splits[k] for k in np.asarray(keys)[keep]], dtype=str)
        return out


def hidden_batch(
    batch: dict[str, np.ndarray], configs: ModalityConfigs, head_states: Any
) -> dict[str, np.ndarray]:
    """Flat training columns -> the frozen heads' hidden layers as flat columns (what a
    fusion over frozen heads trains on). `head_states`: safetensors bytes per modality, or
    an ObjectRef to them (the train job's: ~100 MB of heads must not ride in every task)."""
    from emotiw.models.inference import head_features

    heads = _heads(configs, head_states)
    hidden = head_features(heads, unflatten(batch))
    out = {k: batch[k] for k in ("uri", "label", "provenance")}
    for name, (features,) in hidden["inputs"].items():
        out[f"{name}{_SEP}0"] = features
        out[f"{name}{_SEP}present"] = hidden["present"][name]
    return out


_HEADS: dict[str, dict[str, Any]] = {}


def _heads(configs: ModalityConfigs, states: Any) -> dict[str, Any]:
    """Heads rebuilt from their safetensors bytes (or an ObjectRef to them), once per
    process and set of states (a Ray task worker keeps them for the following batches)."""
    import hashlib

    from safetensors.torch import load

    from emotiw import modalities as registry

    if not isinstance(states, dict):  # an ObjectRef: fetched once per worker process
        key = f"ref:{states.hex()}"
        if key not in _HEADS:
            import ray

            _HEADS.clear()
            _HEADS[key] = _heads(configs, ray.get(states))
        return _HEADS[key]
    digest = hashlib.sha256(b"".join(n.encode() + s for n, s in sorted(states.items())))
    key = digest.hexdigest()
    if key not in _HEADS:
        heads = {}
        for name, state in states.items():
            head = registry.get(name).head(configs.of(name))
            head.load_state_dict(load(state))
            heads[name] = head.eval()
        _HEADS.clear()  # one training run's heads at a time
        _HEADS[key] = heads
    return _HEADS[key]
