"""The feature table: one row per clip with every modality's features, written by the extract
job and read by training and evaluation (pure compute; the Ray plumbing is in `runtime`).

Columns are defined once in `emotiw.tables.schema` (fixed ones) and by each modality
(`Modality.columns`). Features are stored flattened (``list<float32>``; the sampled frames as
``list<binary>`` of JPEGs) and reshaped on reading by each modality (`Modality.read_inputs`),
so an OpenL3 or a log-mel audio table reads the same way. A clip that fails becomes a row
with `error` set and null features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from emotiw import modalities as registry
from emotiw.core import __version__
from emotiw.core.config import MediaConfig, StorageConfig
from emotiw.core.errors import EmotiwError, is_out_of_memory
from emotiw.io.weights import WeightsConfig
from emotiw.modalities.base import MODEL_STAGE


@dataclass(frozen=True)
class ModalityConfigs:
    """The chosen modalities and each one's Config, in canonical registry order.

    Build with `create` (from Config instances) or `preset` (a named preset, e.g. ``paper``
    or ``cpu-smoke``, optionally restricted to some modalities).
    """

    configs: Mapping[str, Any]

    def __post_init__(self) -> None:
        order = registry.canonical(tuple(self.configs))
        for name in order:
            expected = registry.get(name).Config
            if type(self.configs[name]) is not expected:
                raise ValueError(f"{name}: expected a {expected.__qualname__}")
        object.__setattr__(self, "configs", {n: self.configs[n] for n in order})

    @classmethod
    def create(cls, *configs: Any) -> ModalityConfigs:
        """From Config instances; each one's type says which modality it configures."""
        return cls({registry.for_config(c).name: c for c in configs})

    @classmethod
    def preset(cls, name: str = "paper", modalities: tuple[str, ...] = ()) -> ModalityConfigs:
        """The modalities whose `presets` give a Config for `name`, with that Config. With
        `modalities`, exactly those: a modality the preset leaves out (None, or a plug-in that
        does not name it) then gets its dataclass defaults."""
        known = sorted({p for spec in registry.specs() for p in spec.presets})
        if name not in known:
            raise ValueError(f"unknown preset {name!r}; the modalities define {known}")
        if not modalities:
            specs = [s for s in registry.specs() if s.presets.get(name) is not None]
            return cls({s.name: s.presets[name] for s in specs})
        specs = list(registry.specs(registry.canonical(modalities)))
        return cls({s.name: s.presets.get(name) or s.Config() for s in specs})

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.configs)

    def of(self, name: str) -> Any:
        return self.configs[name]

    def specs(self) -> tuple[Any, ...]:
        return registry.specs(self.modalities)

    def front_ends(self) -> dict[str, dict[str, Any]]:
        """What each modality's features are: its Config's front-end fields (not head or
        runtime settings), as the extract job records them in the feature table."""
        from emotiw.modalities.base import front_end_fields

        return {
            name: {f: _plain(getattr(cfg, f)) for f in front_end_fields(type(cfg))}
            for name, cfg in self.configs.items()
        }

    def with_backend(self, backend: str) -> ModalityConfigs:
        """These configs with every front-end network run by `backend` (the modalities whose
        Config has a ``backend`` field; `modalities.nets.backends`)."""
        return ModalityConfigs({
            name: dataclasses.replace(cfg, backend=backend) if hasattr(cfg, "backend") else cfg
            for name, cfg in self.configs.items()
        })  # fmt: skip

    def with_front_ends(
        self, recorded: Mapping[str, Mapping[str, Any]], given: Mapping[str, Iterable[str]]
    ) -> ModalityConfigs:
        """These configs with the front-end fields a feature table recorded (`front_ends`).
        `given` names the fields the user set explicitly per modality: one that disagrees with
        the table is an error (the features were not made that way); a modality the table has
        no features for is an error too.

        Raises:
            ValueError: a conflicting flag, or a modality missing from the table.
        """
        missing = [m for m in self.modalities if m not in recorded]
        if missing:
            raise ValueError(
                f"the feature table has no {', '.join(missing)} features (it was extracted with "
                f"{', '.join(recorded) or 'none'}); drop them from --modalities or re-extract"
            )
        from emotiw.modalities.base import front_end_fields

        configs = {}
        for name, cfg in self.configs.items():
            known = {f.name for f in dataclasses.fields(cfg)}
            values = {k: v for k, v in recorded[name].items() if k in known}
            # a front-end field the table lacks did not exist yet: its features were made as
            # the code then behaved (`Config.BEFORE`)
            before = getattr(cfg, "BEFORE", {})
            for missing in (set(front_end_fields(type(cfg))) - set(recorded[name])) & set(before):
                values[missing] = before[missing]
            for field_name in given.get(name, ()):
                mine = _plain(getattr(cfg, field_name))
                if field_name in values and values[field_name] != mine:
                    flag = f"--{name}-{field_name}".replace("_", "-")
                    raise ValueError(
                        f"{flag} {mine} conflicts with the feature table, extracted with "
                        f"{values[field_name]}: drop the flag (training takes the table's) or "
                        "re-extract with it"
                    )
            current = {k: getattr(cfg, k) for k in values}
            values = {k: type(current[k])(v) if isinstance(current[k], tuple) else v
                      for k, v in values.items()}  # fmt: skip
            configs[name] = dataclasses.replace(cfg, **values)
        return ModalityConfigs(configs)

    def weight_names(self) -> tuple[str, ...]:
        """Registry names of every pretrained weight file these configs load."""
        names = (n for s in self.specs() for n in s.weight_names(self.of(s.name)))
        return tuple(dict.fromkeys(names))


def _plain(value: Any) -> Any:
    """A config value as JSON keeps it (tuples become lists), so recorded and given compare."""
    return list(value) if isinstance(value, tuple) else value


def presence(values: list[Any]) -> np.ndarray:
    """A presence column (count or bool) -> bool per clip (null counts as absent)."""
    return np.array([bool(v or 0) for v in values], dtype=bool)


def feature_schema() -> Any:
    """The feature table's schema for the registered modalities."""
    from emotiw.tables.schema import feature_schema as schema

    return schema(registry.specs())


class ClipFeatureExtractor:
    """Bytes of one clip -> one feature-table row (a dict); any failure -> an error row.

    Modalities whose stage is the model stage are not extracted here but later from the row's
    JPEG frames (the scoring job runs pose's Keypoint R-CNN next to the heads, on the GPU
    where there is one): their features stay null and the frames column is written.
    """

    def __init__(
        self,
        configs: ModalityConfigs,
        media: MediaConfig | None = None,
        weights: WeightsConfig | None = None,
        defer: bool = False,
    ) -> None:
        self.configs = configs
        self.front_ends = json.dumps(configs.front_ends(), sort_keys=True)
        self.media = media or MediaConfig()
        specs = configs.specs()
        self.deferred = tuple(
            s.name for s in specs if defer and s.stage(configs.of(s.name)) == MODEL_STAGE
        )
        self.specs = [s for s in specs if s.name not in self.deferred]
        self.extractors = {s.name: s.extractor(configs.of(s.name), weights) for s in self.specs}
        self.keep_frames = any(s.needs_frames(configs.of(s.name)) for s in specs)
        self.provenance = {
            key: str(p) for ex in self.extractors.values() for key, p in ex.provenance.items()
        }
        self.weights = json.dumps(self.provenance, sort_keys=True)  # the rows' `weights`

    def info(self) -> dict[str, str]:
        """The columns every row of this extractor carries, whatever happens to its clip."""
        return {"weights": self.weights, "front_ends": self.front_ends}

    def __call__(
        self, uri: str, video_id: str, data: bytes | str | Exception, label: int | None,
        run_id: str, window: Any = None, storage: StorageConfig | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """`data` is the clip's bytes, or the exception reading them raised; or, with a
        `window` of a long video (`emotiw.io.windows`), its URL, read with `storage`."""
        from emotiw.io.frames import encode_frames
        from emotiw.io.media import decode
        from emotiw.tables.schema import FRAMES_COLUMN

        row = base_row(uri, video_id, label, run_id, self.info())
        digest = hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else None
        row["content_sha256"] = digest
        try:
            if isinstance(data, Exception):
                raise data
            clip = decode(data, self.media, storage, window)
            row.update(duration_s=clip.meta.duration_s, n_frames=clip.n_valid_frames)
            for spec in self.specs:
                try:
                    out = self.extractors[spec.name](clip)
                except EmotiwError:
                    raise
                except Exception as exc:  # a model failing on one clip must not stop the job
                    reason = "out_of_memory" if is_out_of_memory(exc) else f"{spec.name}_failed"
                    raise EmotiwError(reason, f"{spec.name}: {type(exc).__name__}: {exc}") from exc
                row.update(spec.row_values(out, self.configs.of(spec.name)))
            if self.keep_frames:
                quality = self.media.jpeg_quality
                row[FRAMES_COLUMN] = encode_frames(clip.frames, clip.frame_mask, quality)
        except EmotiwError as exc:
            row.update(error=str(exc), error_reason=exc.reason)
        except Exception as exc:  # unexpected: still a row, with the type for the analyst
            row.update(error=f"internal: {type(exc).__name__}: {exc}", error_reason="internal")
        return row


def base_row(
    uri: str, video_id: str, label: int | None, run_id: str, info: Mapping[str, str] | None
) -> dict[str, Any]:
    """The columns of a feature row known before its clip is read (`info`: the extractor's
    weights and front-ends, `ClipFeatureExtractor.info`)."""
    return {"video_id": video_id, "uri": uri, "label": label, **(info or {}),
            "code_version": __version__, "run_id": run_id, "extracted_at": time.time()}  # fmt: skip


def rows_to_table(rows: list[dict[str, Any]]) -> Any:
    """Feature rows -> a pyarrow Table with the feature schema and the in-flight detail
    columns (`emotiw.tables.schema.with_details`)."""
    import pyarrow as pa

    from emotiw.tables.schema import with_details

    schema = with_details(feature_schema(), registry.specs())
    columns = {}
    for f in schema:
        values = [r.get(f.name) for r in rows]
        if f.name == "extracted_at":
            values = [None if v is None else int(v * 1_000_000) for v in values]
        columns[f.name] = pa.array(values, type=f.type)
    return pa.table(columns, schema=schema)


@dataclass
class FeatureSet:
    """Labelled, successfully extracted clips as arrays, ready for training or evaluation.

    Attributes:
        video_ids: ``[N]``.
        uris: ``[N]`` where each clip was read from (the clip's identity).
        labels: int64 ``[N]`` class indices (-1 for unlabelled clips, when allowed).
        inputs: modality -> its head's input arrays, each ``[N, ...]`` (see
            `emotiw.modalities.base.Modality.read_inputs`).
        present: modality -> bool ``[N]``.
    """

    video_ids: np.ndarray
    uris: np.ndarray
    labels: np.ndarray
    inputs: dict[str, tuple[np.ndarray, ...]]
    present: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.video_ids)

    def subset(self, index: np.ndarray) -> FeatureSet:
        return FeatureSet(
            self.video_ids[index],
            self.uris[index],
            self.labels[index],
            {k: tuple(a[index] for a in v) for k, v in self.inputs.items()},
            {k: v[index] for k, v in self.present.items()},
        )


def read_rows(uri: str, storage: StorageConfig | None = None) -> Any:
    """Every committed row of the feature table at `uri` (pyarrow Table), one per clip (URI):
    its newest successful row, or its newest error row if it never succeeded."""
    from emotiw.io.storage import arrow_filesystem
    from emotiw.tables.chunks import read

    fs, path = arrow_filesystem(uri, storage)
    table = read(fs, path, feature_schema())
    return table.take(newest_per_uri(table))


def newest_per_uri(table: Any) -> np.ndarray:
    """Indices of the row each clip (URI) is read from: its newest successful row, else its
    newest error row (`table` needs the uri, error and extracted_at columns)."""
    if table.num_rows == 0:
        return np.zeros(0, np.int64)
    ok = table["error"].is_null().to_numpy(zero_copy_only=False)
    when = table["extracted_at"].cast("int64").to_numpy(zero_copy_only=False)
    uris = table["uri"].to_numpy(zero_copy_only=False)
    order = np.lexsort((when, ok, uris))  # per uri: errors first, then successes, oldest first
    last = np.r_[uris[order][1:] != uris[order][:-1], True]
    return order[last]


def to_feature_set(rows: Any, configs: ModalityConfigs, require_labels: bool = True) -> FeatureSet:
    """Successful rows -> arrays for `configs.modalities` (error rows and, when
    `require_labels`, unlabelled rows are left out)."""
    import pyarrow.compute as pc

    keep = pc.is_null(rows["error"])
    if require_labels:
        keep = pc.and_(keep, pc.is_valid(rows["label"]))
    table = rows.filter(keep).to_pydict()
    inputs, present = {}, {}
    for spec in configs.specs():
        inputs[spec.name] = spec.read_inputs(table, configs.of(spec.name))
        present[spec.name] = presence(table[spec.presence])
    return FeatureSet(
        np.asarray(table["video_id"], dtype=object),
        np.asarray(table["uri"], dtype=object),
        np.asarray([-1 if v is None else v for v in table["label"]], dtype=np.int64),
        inputs,
        present,
    )
