"""Layer 2, tables: the Parquet outputs and how they are written exactly once.

- `schema`: the columns of the feature, scores and detail tables (name, type, doc);
- `chunks`: the append-only chunked table: atomic chunk commits, crash recovery, reading;
- `keys`: the done-key index (`--skip-existing`) and a dry run's counts;
- `timeline`: a video's row from its windows' rows;
- `lease`: the single-writer lease on an output (docs/exactly-once.md);
- `details`: detail tables (the per-face table) committed in step with their main chunks.
"""

from emotiw.core.exports import lazy

__all__, __getattr__ = lazy(
    __name__,
    {
        "read": "chunks",
        "done_keys": "keys",
        "score_schema": "schema",
        "feature_schema": "schema",
        "detail_schema": "schema",
    },
)
