"""Heads and fusion on arrays: batching into tensors, prediction, frozen heads' hidden layers,
and `ClipScorer`, the scoring job's model stage (pure compute; Ray wraps it in `runtime`).

The scoring job's CPU stage produces the same rows as the extract job (`features`), except
that modalities whose stage is the model stage (pose's Keypoint R-CNN, by default) are left
for `ClipScorer`, which runs them on the row's JPEG frames next to the heads and the fusion.
So training and scoring share every extractor and cannot drift apart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emotiw import modalities as registry
from emotiw.core import __version__
from emotiw.core.config import CLASS_NAMES
from emotiw.core.errors import is_out_of_memory, is_transient
from emotiw.io.weights import WeightsConfig
from emotiw.modalities.base import MODEL_STAGE, resolve_device
from emotiw.models import fusion
from emotiw.models.features import FeatureSet
from emotiw.tables.schema import WINDOW_COLUMNS, details_column, score_schema, with_details

# Columns of the job's listing in each feature row that the scorer copies to the score row.
_LISTING_COLUMNS = ("etag", "size_bytes")


def _to_torch_inputs(
    inputs: Mapping[str, tuple[np.ndarray, ...]], device: str | torch.device = "cpu"
) -> dict[str, tuple[torch.Tensor, ...]]:
    """Numpy head inputs -> tensors: bytes (frames) and masks stay as they are, the rest
    becomes float32 (backbone maps are stored as float16 to save memory)."""
    out = {}
    for name, arrays in inputs.items():
        tensors = [torch.as_tensor(a, device=device) for a in arrays]
        keep = (torch.uint8, torch.bool)
        out[name] = tuple(t if t.dtype in keep else t.float() for t in tensors)
    return out


def batch(
    arrays: dict[str, Any], index: np.ndarray, device: str | torch.device
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor]:
    """Rows `index` of worker arrays (``inputs``, ``present``, ``labels``) as tensors."""
    inputs = _to_torch_inputs(
        {k: tuple(a[index] for a in v) for k, v in arrays["inputs"].items()}, device
    )
    present = {k: torch.as_tensor(v[index], device=device) for k, v in arrays["present"].items()}
    return inputs, present, torch.as_tensor(arrays["labels"][index], device=device)


def _arrays_of(data: FeatureSet) -> dict[str, Any]:
    """A FeatureSet as the plain dict the training workers receive."""
    return {"inputs": data.inputs, "present": data.present, "labels": data.labels}


def predict(
    model: nn.Module, data: FeatureSet, modality: str | None, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and predictions of a head (`modality`) or a fusion on `data`."""
    return predict_arrays(model, _arrays_of(data), modality, batch_size)


def predict_arrays(
    model: nn.Module, arrays: dict[str, Any], modality: str | None, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """`predict` on worker arrays (``inputs``, ``present``, ``labels``)."""
    model.eval()
    probs, preds = [], []
    n = len(arrays["labels"])
    with torch.no_grad():
        for i in range(0, n, batch_size):
            inputs, present, _ = batch(arrays, np.arange(i, min(i + batch_size, n)), "cpu")
            if modality is None:
                p, y = model.predict(inputs, present)
            else:
                p = fusion.call_head(model, inputs[modality]).softmax(-1)
                y = p.argmax(-1)
            probs.append(p.numpy())
            preds.append(y.numpy())
    if not probs:
        return np.zeros((0, 3)), np.zeros(0, int)
    return np.concatenate(probs), np.concatenate(preds)


def head_features(
    heads: Mapping[str, nn.Module], arrays: dict[str, Any], batch_size: int = 32
) -> dict[str, Any]:
    """Every frozen head's hidden layer (`forward_features`) on worker arrays, as worker
    arrays: a fusion over frozen heads trains on these (`fusion.Precomputed`), so each head
    runs once, not once per epoch."""
    hidden: dict[str, list[np.ndarray]] = {m: [] for m in heads}
    n = len(arrays["labels"])
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            inputs, _, _ = batch(arrays, np.arange(i, min(i + batch_size, n)), "cpu")
            for name, head in heads.items():
                features = fusion.call_head(head, inputs[name], "forward_features")
                hidden[name].append(features.float().numpy())
    return {
        "inputs": {
            m: (np.concatenate(v) if v else np.zeros((0, int(heads[m].feature_dim)), np.float32),)
            for m, v in hidden.items()
        },
        "present": {m: arrays["present"][m] for m in heads},
        "labels": arrays["labels"],
    }


@dataclass(frozen=True)
class ModelRef:
    """What scored a row: the URI as given, the registered name and version (None locally)."""

    uri: str
    name: str
    version: str | None


class ClipScorer:
    """Holds a loaded package (and any model-stage extractor) and scores batches of rows."""

    def __init__(
        self,
        package_dir: Path,
        ref: ModelRef,
        weights: WeightsConfig | None = None,
        device: str = "auto",
        placement: str | None = None,
        attempts: int = 1,
        backoff_s: float = 0.0,
        frame_batch: int = 32,
        autocast: str = "auto",
        backend: str = "auto",
    ) -> None:
        from emotiw.models.packaging import load_model

        self.attempts, self.backoff_s = attempts, backoff_s
        self.device = resolve_device(device)
        self.frame_batch = frame_batch  # halved for good after an out-of-memory failure
        self.amp = _autocast_dtype(autocast, self.device)
        self.package = load_model(package_dir, device=str(self.device))
        self.ref = ref
        self.configs = self.package.configs.with_backend(backend)  # model-stage front-ends
        self.placement = placement or str(self.device)
        self.extractors: dict[str, Any] = {}
        loaded: dict[str, str] = {}
        for spec in self.configs.specs():
            cfg = self.configs.of(spec.name)
            if spec.stage(cfg) == MODEL_STAGE:  # runs where this actor's model stage runs
                cfg = spec.on_device(cfg, self.device.type)
                self.extractors[spec.name] = spec.extractor(cfg, weights)
                loaded.update({k: str(v) for k, v in self.extractors[spec.name].provenance.items()})
        # A row's `weights`: the package's (heads, training-time front-ends), overridden by
        # what this run loaded: the CPU stage's front-ends (the feature row's) and the model
        # stage's (`loaded`), so the column says which weights scored the clip.
        self.provenance = dict(self.package.provenance)
        for spec in self.configs.specs():  # heads whose front-end a backend may run (scene)
            if spec.name in self.package.heads:
                head, cfg = self.package.heads[spec.name], self.configs.of(spec.name)
                for key, ran in spec.with_backend(head, cfg, weights).items():
                    loaded[key] = f"{self.provenance.get(key, key)} [run by {ran}]"
        self.loaded = loaded
        self.specs = {s.name: s for s in self.configs.specs()}
        # Output columns of every registered modality (those not in the model stay null).
        self.schema = with_details(score_schema(registry.specs()), registry.specs())
        self.detail_columns = [details_column(s.name) for s in registry.specs() if s.details_table]
        self.stat_columns = [c.name for s in registry.specs() for c in s.stats]
        self.window_columns = [c.name for c in WINDOW_COLUMNS]
        main = self.package.fusion
        # Each head's hidden layer is computed once and feeds both its own probabilities and
        # the fusion (over `Precomputed` stand-ins holding the real heads' classifiers).
        stand_ins = {
            m: fusion.Precomputed(int(self.package.heads[m].feature_dim), self.package.heads[m])
            for m in main.cfg.modalities
        }
        self.fused = fusion.build(stand_ins, main.cfg).to(self.device).eval()
        self.fused.load_state_dict(fusion.fusion_state(main), strict=False)

    def __call__(self, table: Any, run_id: str) -> Any:
        """Feature rows (the feature schema) -> score rows (pyarrow)."""
        import pyarrow as pa

        rows = table.to_pylist()
        # Keyed by position while scored: a batch may hold several windows of one video.
        uris = [row["uri"] for row in rows]
        for i, row in enumerate(rows):
            row["uri"] = str(i)
        self._extract_deferred([r for r in rows if r["error"] is None])
        scored, tries = self._score_rows([r for r in rows if r["error"] is None])
        now = time.time()
        out = []
        for i, (row, uri) in enumerate(zip(rows, uris, strict=True)):
            result = scored.get(str(i), {}) if row["error"] is None else {}
            attempts = (row.get("attempts") or 1) + tries.get(str(i), 1) - 1
            out.append(
                {
                    "video_id": row["video_id"],
                    "uri": uri,
                    **{c: row.get(c) for c in self.window_columns},
                    "content_sha256": row["content_sha256"],
                    **{c: row.get(c) for c in _LISTING_COLUMNS},
                    **result,
                    **{c: row.get(c) for c in self.stat_columns},
                    "duration_s": row.get("duration_s"),
                    "n_frames": row.get("n_frames"),
                    "error": row["error"],
                    "error_reason": row["error_reason"],
                    "retryable": is_transient(row["error_reason"]) if row["error"] else None,
                    "attempts": attempts,
                    "model_uri": self.ref.uri,
                    "model_name": self.ref.name,
                    "model_version": self.ref.version,
                    "fusion": self.package.default,
                    "weights": json.dumps(
                        {**self.provenance, **json.loads(row["weights"] or "{}"), **self.loaded},
                        sort_keys=True,
                    ),
                    "model_device": self.placement,
                    "code_version": __version__,
                    "run_id": run_id,
                    "scored_at": int(now * 1_000_000),
                    **{c: row.get(c) for c in self.detail_columns},
                }
            )
        return pa.Table.from_pylist(out, schema=self.schema)

    def _score_rows(
        self, rows: list[dict[str, Any]], tries: int = 1
    ) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
        """`_score` on feature rows that survives failures: a failing batch is halved (out of
        memory, or one row breaking the batch) down to single rows, each tried `attempts`
        times; a row still failing gets `model_failed` / `out_of_memory` set, so the next
        run retries it. Returns uri -> score columns and uri -> tries (where more than 1)."""
        import pyarrow as pa

        from emotiw.core.retry import delays
        from emotiw.models.features import feature_schema, to_feature_set

        if not rows:
            return {}, {}
        schema = feature_schema()
        table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema)
        try:
            return self._score(to_feature_set(table, self.configs, require_labels=False)), {}
        except Exception as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(rows) > 1:
                half = len(rows) // 2
                first, first_tries = self._score_rows(rows[:half])
                second, second_tries = self._score_rows(rows[half:])
                return {**first, **second}, {**first_tries, **second_tries}
            if tries < self.attempts:
                time.sleep(delays(self.attempts, self.backoff_s)[tries - 1])
                return self._score_rows(rows, tries + 1)
            reason = "out_of_memory" if is_out_of_memory(exc) else "model_failed"
            rows[0]["error"] = f"{reason}: {type(exc).__name__}: {exc}"
            rows[0]["error_reason"] = reason
            return {}, {rows[0]["uri"]: tries}

    def _extract_deferred(self, rows: list[dict[str, Any]]) -> None:
        """Model-stage extractors on the frames decoded (once) from the rows' JPEGs, frames of
        all the rows batched together (`extract_many`); a clip that fails is that clip's
        error row."""
        from emotiw.io.frames import clip_from_frames, decode_frames
        from emotiw.tables.schema import FRAMES_COLUMN

        if not self.extractors or not rows:
            return
        clips = {}
        for row in rows:
            try:
                clips[row["uri"]] = clip_from_frames(*decode_frames(row[FRAMES_COLUMN]))
            except Exception as exc:
                first = next(iter(self.extractors))
                _fail(row, f"{first}_failed", exc, first)
        for name, extractor in self.extractors.items():
            live = [r for r in rows if r["error"] is None]
            outs = self._extract_many(extractor, [clips[r["uri"]] for r in live])
            for row, out in zip(live, outs, strict=True):
                if isinstance(out, Exception):
                    reason = "out_of_memory" if is_out_of_memory(out) else f"{name}_failed"
                    _fail(row, reason, out, name)
                else:
                    row.update(self.specs[name].row_values(out, self.configs.of(name)))

    def _extract_many(self, extractor: Any, clips: list[Any]) -> list[Any]:
        """Extractions of `clips` (or each one's exception): the extractor's `extract_many`
        (frames of all the clips batched, `frame_batch` per forward) where it has one; out of
        memory halves the frame batch and tries again. Otherwise, or when one clip breaks the
        batch, clip by clip, each retried `attempts` times on out of memory."""
        from emotiw.core import retry

        many = getattr(extractor, "extract_many", None)
        while many is not None and clips:
            try:
                with self._autocast():
                    return list(many(clips, self.frame_batch))
            except Exception as exc:
                if not self._out_of_memory(exc) or self.frame_batch == 1:
                    break
                self.frame_batch //= 2
        out: list[Any] = []
        for clip in clips:
            try:
                with self._autocast():
                    call = lambda c=clip: extractor(c)  # noqa: E731
                    out.append(retry.call(call, self.attempts, self.backoff_s, self._out_of_memory))
            except Exception as exc:  # one clip's failure is that clip's error row
                out.append(exc)
        return out

    def _autocast(self, heads: bool = False) -> Any:
        """Mixed precision on the model stage's device when asked (`_autocast_dtype`): for the
        front-ends anywhere, for the heads on CUDA only (oneDNN has no bfloat16 LSTM)."""
        import contextlib

        if self.amp is None or (heads and self.device.type != "cuda"):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _out_of_memory(self, exc: BaseException) -> bool:
        """Retry predicate: out of memory (after freeing what the CUDA allocator caches)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return is_out_of_memory(exc)

    def _score(self, data: FeatureSet) -> dict[str, dict[str, Any]]:
        """uri -> the probability and class columns of each scored clip."""
        if len(data) == 0:
            return {}
        inputs = _to_torch_inputs(data.inputs, self.device)
        present = {k: torch.as_tensor(v, device=self.device) for k, v in data.present.items()}
        hidden, per_modality = {}, {}
        with torch.inference_mode(), self._autocast(heads=True):
            for m in self.fused.cfg.modalities:
                head = self.package.heads[m]
                hidden[m] = (fusion.call_head(head, inputs[m], "forward_features"),)
                logits = head.forward_head(hidden[m][0])
                per_modality[m] = logits.softmax(-1).float().cpu().numpy()
            probs, preds = self.fused.predict(hidden, present)
        probs, preds = probs.float().cpu().numpy(), preds.cpu().numpy()
        out = {}
        for i, uri in enumerate(data.uris):
            cols: dict[str, Any] = {
                f"prob_{c}": float(probs[i, j]) for j, c in enumerate(CLASS_NAMES)
            }
            cols["predicted"] = CLASS_NAMES[int(preds[i])]
            for m, p in per_modality.items():
                if data.present[m][i]:
                    cols.update(
                        {f"{m}_prob_{c}": float(p[i, j]) for j, c in enumerate(CLASS_NAMES)}
                    )
                    cols[f"{m}_predicted"] = CLASS_NAMES[int(p[i].argmax())]
            out[str(uri)] = cols
        return out


def _autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bfloat16 on CUDA (halves activation memory; the heads' outputs are cast
    back to float32), none on CPU; ``bf16`` / ``fp16`` anywhere; ``off``."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    choices = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in choices:
        raise ValueError(f"autocast must be auto, off, bf16 or fp16, not {name!r}")
    return choices[name]


def _fail(row: dict[str, Any], reason: str, exc: BaseException, name: str | None = None) -> None:
    where = f"{name}: " if name else ""
    row["error"] = f"{reason}: {where}{type(exc).__name__}: {exc}"
    row["error_reason"] = reason
