"""The modality contract: what every modality module registers, so every job treats them alike.

A modality is one module under `emotiw.modalities` that defines a frozen ``Config`` dataclass,
an ``Extractor`` (CPU side: decoded `Clip` -> `Extraction`), a ``Head`` (``torch.nn.Module``
with ``forward_features(*inputs) -> hidden`` and ``forward_head(hidden) -> logits``) and one
`Modality` subclass instance passed to `emotiw.modalities.register`. Everything the jobs need
to know about a modality (its feature-table columns, presence column, stage placement,
optimiser, presets, weight files) is asked of that object; no code outside
`emotiw.modalities` names a modality.

Head inputs are always a tuple of tensors (``head(*inputs)``): most modalities have one
(the ``[B, T, F]`` features); the scene has two (frames or backbone maps, and the frame mask).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from emotiw.tables.schema import Column  # a modality's columns: name, type, doc

if TYPE_CHECKING:
    import torch

    from emotiw.io.weights import Provenance, WeightsConfig, WeightSpec

# Where a modality's extractor runs: the CPU decode/extract pool, or the model (GPU) stage on
# frames decoded from the feature row's JPEGs.
CPU_STAGE = "cpu"
MODEL_STAGE = "model"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when this process sees a GPU, else CPU; any other torch device name
    as given (every model front-end and the scoring model stage resolve it the same way)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# Field metadata of a modality Config. HEAD: a head / training setting (architecture,
# optimiser): extract offers no flag for it (it would do nothing there). RUNTIME: how a
# front-end runs (device, batch, memory layout), not what it computes: free in every job.
# Every other field says what the features are: the extract job records them in the feature
# table (`front_ends`) and training takes them from there, so extract's flags are never
# repeated (a conflicting one is an error).
HEAD = {"head": True}
RUNTIME = {"runtime": True}


def front_end_fields(config_cls: type) -> tuple[str, ...]:
    """The fields of a modality Config that say what its features are (neither `HEAD` nor
    `RUNTIME`)."""
    import dataclasses

    return tuple(
        f.name for f in dataclasses.fields(config_cls)
        if not (f.metadata.get("head") or f.metadata.get("runtime"))
    )  # fmt: skip


def head_fields(config_cls: type) -> tuple[str, ...]:
    import dataclasses

    return tuple(f.name for f in dataclasses.fields(config_cls) if f.metadata.get("head"))


@dataclass(frozen=True)
class Extraction:
    """One clip's output of a modality extractor.

    Attributes:
        features: the modality's fixed per-clip array: float32 (e.g. face ``[12, 22]``), or
            for the scene the uint8 frames ``[12, 320, 480, 3]``, whose backbone is part of
            the scene model.
        details: columnar detail rows (per face, per person), column name -> 1-D array; all
            arrays have the same length, possibly zero.
        stats: small per-clip numbers the outputs report (e.g. ``n_faces``).
    """

    features: np.ndarray
    details: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_details(self) -> int:
        return len(next(iter(self.details.values()))) if self.details else 0


class Modality:
    """Base class of a modality's registration. Subclasses set the class attributes and
    override the hooks whose default does not fit; the defaults describe the common case of a
    float ``[T, F]`` feature array stored flattened in one column and one head input.

    Class attributes:
        name: registry key, also the feature column's name and the score columns' prefix.
        Config: the frozen config dataclass (fields ``weights``, ``seed``, ``lr`` at least).
        order: canonical position in fused layouts (lower first; ties by name).
        presence: the feature-table column saying whether a clip has the modality (a count or
            a bool; null counts as absent): fusion's presence mask.
        stats: the per-clip stat columns the extractor reports (name -> `Column`).
        details_table: name of the modality's detail table (``faces``: one row per detail the
            extractor reports in `Extraction.details`), or "" for none.
        details: that table's own columns (`emotiw.tables.schema.detail_schema` adds the keys).
        vote_weight: weight in weighted voting.
        weight_specs: the pretrained weight files this modality registers.
        presets: preset name -> Config, or None where the preset leaves the modality out (a
            preset not named here leaves it out too).
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    order: ClassVar[int] = 100
    presence: ClassVar[str]
    stats: ClassVar[tuple[Column, ...]] = ()
    details_table: ClassVar[str] = ""
    details: ClassVar[tuple[Column, ...]] = ()
    vote_weight: ClassVar[float] = 1.0
    weight_specs: ClassVar[tuple[WeightSpec, ...]] = ()
    presets: ClassVar[Mapping[str, Any]] = {}
    feature_doc: ClassVar[str] = ""

    # --- shapes and the feature table ---------------------------------------------------------

    def feature_shape(self, cfg: Any) -> tuple[int, ...]:
        """Per-clip feature shape (what the extractor's `Extraction.features` holds); by
        default the defining module's ``feature_shape(cfg)``."""
        return tuple(_module(self).feature_shape(cfg))

    def columns(self) -> tuple[Column, ...]:
        """Feature-table columns this modality writes (the features, then its stats)."""
        return (Column(self.name, "list<float32>", self.feature_doc), *self.stats)

    def stage(self, cfg: Any) -> str:
        """`CPU_STAGE` (the decode/extract pool) or `MODEL_STAGE` (next to the heads, on the
        frames stored in the feature row)."""
        return CPU_STAGE

    def on_device(self, cfg: Any, device: str) -> Any:
        """`cfg` for an extractor running in the model stage on `device` (``cpu``, ``cuda``)."""
        return cfg

    def needs_frames(self, cfg: Any) -> bool:
        """Whether the feature row must carry the sampled frames (JPEG) for this modality."""
        return self.stage(cfg) == MODEL_STAGE

    def row_values(self, out: Extraction, cfg: Any) -> dict[str, Any]:
        """Feature-table values of one clip: the flattened features and the stats (and, in
        flight to the detail table, its details as a list of dicts)."""
        from emotiw.tables.schema import details_column

        values: dict[str, Any] = {self.name: np.asarray(out.features, np.float32).reshape(-1)}
        for column in self.stats:
            values[column.name] = _cast(out.stats.get(column.name), column.type)
        if self.details_table and out.details:
            names = [c.name for c in self.details]
            lists = [np.asarray(out.details[n]).tolist() for n in names]
            values[details_column(self.name)] = [
                dict(zip(names, v, strict=True)) for v in zip(*lists, strict=True)
            ]
        return values

    def read_inputs(self, table: Mapping[str, Sequence[Any]], cfg: Any) -> tuple[np.ndarray, ...]:
        """The head inputs of N rows (columns as Python lists) as numpy arrays ``[N, ...]``."""
        column = table[self.name]
        if any(v is None for v in column):
            raise ValueError(f"the feature table has no {self.name} features for some clips")
        shape = self.feature_shape(cfg)
        return (np.asarray(column, dtype=np.float32).reshape(len(column), *shape),)

    def example_inputs(self, cfg: Any, n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
        """Random head inputs of `n` clips with the real shapes and dtypes (contract tests,
        benchmarks: the cost of a head does not depend on the values)."""
        rng = np.random.default_rng(seed)
        return (rng.standard_normal((n, *self.feature_shape(cfg))).astype(np.float32),)

    # --- models --------------------------------------------------------------------------------

    def extractor(self, cfg: Any, weights: WeightsConfig | None = None) -> Any:
        """The CPU-side extractor (loads its front-end weights once)."""
        module = _module(self)
        return module.Extractor(cfg, weights)

    def weight_names(self, cfg: Any) -> tuple[str, ...]:
        """Registry names of the pretrained weights this modality's extractor and heads load
        with `cfg`: by default every `weight_specs` entry when `cfg.weights` is pretrained; a
        run checks them on the driver before any actor starts (`emotiw.jobs.preflight`)."""
        pretrained = getattr(cfg, "weights", None) == "pretrained"
        return tuple(s.name for s in self.weight_specs) if pretrained else ()

    def head(self, cfg: Any) -> torch.nn.Module:
        """A head to be filled from a state dict (no pretrained weights are looked up)."""
        return _module(self).Head(cfg)

    def head_with_frontend(
        self, cfg: Any, state: Mapping[str, Any], weights: WeightsConfig | None = None
    ) -> torch.nn.Module:
        """The trained head ready to score raw inputs, from the state dict training produced
        (a head with a frozen pretrained front-end puts the registry's weights back)."""
        head = self.head(cfg)
        head.load_state_dict(dict(state))
        return head

    def precompute(
        self, cfg: Any, inputs: tuple[np.ndarray, ...], weights: WeightsConfig | None
    ) -> tuple[tuple[np.ndarray, ...], dict[str, str]] | None:
        """Run a frozen front-end once before training (its outputs replace the inputs);
        None when the head has no such part. Returns the new inputs and their provenance."""
        return None

    def provenance(self, head: torch.nn.Module) -> dict[str, Provenance]:
        """Weights provenance of a built head's pretrained parts (none by default)."""
        return {}

    def with_backend(
        self, head: torch.nn.Module, cfg: Any, weights: WeightsConfig | None = None
    ) -> dict[str, str]:
        """Scoring: let `cfg.backend` run the head's front-end network, if it has one
        (`nets.backends`; scene's backbone). Returns, per provenance key it changed, what
        now runs it (``onnxruntime 1.31.0``, or eager with the fallback's reason)."""
        return {}

    def parameter_groups(self, head: torch.nn.Module, cfg: Any) -> list[dict[str, Any]]:
        """Optimiser parameter groups (per-group weight decay where the paper regularises)."""
        return [{"params": [p for p in head.parameters() if p.requires_grad]}]

    def optimizer(self, params: Any, cfg: Any) -> torch.optim.Optimizer:
        """Adam at the config's learning rate."""
        import torch

        return torch.optim.Adam(params, lr=cfg.lr)

    def scheduler(self, opt: torch.optim.Optimizer, cfg: Any) -> Any | None:
        """A per-epoch learning-rate schedule, or None."""
        return None

    def __repr__(self) -> str:
        return f"<modality {self.name}>"

    def __reduce__(self) -> Any:
        # Pickled by name: the receiving process looks the registered instance up (and imports
        # the defining module first), so Ray workers share the one registry entry.
        from emotiw.modalities import get

        return (get, (self.name, type(self).__module__))


def _module(spec: Modality) -> Any:
    import sys

    return sys.modules[type(spec).__module__]


def _cast(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "bool":
        return bool(value)
    if kind in ("int32", "int16"):
        return int(value)
    if kind == "float32":
        return float(value)
    return value
