"""Layer 6, jobs: one module per job (its config, its run function, its summary) and their Ray
plumbing.

- `extract`, `score`, `evaluate`, `train/`, `demo`: the jobs;
- `windowing`: videos of any length in the scoring job (probe, windows, video rows);
- `report`: a video's timeline (PNG) and a scores table's run report (HTML);
- `pipeline`: Ray start, the CPU and model actors, the output's lease and the stream of rows
  into committed chunks;
- `pools`: actor pool sizes, memory declarations, input blocks;
- `preflight`: the driver's checks before any actor starts;
- `cluster_watch`: nodes lost during a run and what Ray redid.
"""

from emotiw.core.exports import lazy

__all__, __getattr__ = lazy(
    __name__,
    {
        "ExtractConfig": "extract",
        "ExtractSummary": "extract",
        "run_extract": "extract",
        "ScoreConfig": "score",
        "ScoreSummary": "score",
        "run_score": "score",
        "EvaluateConfig": "evaluate",
        "run_evaluate": "evaluate",
        "TrainConfig": "train",
        "run_train": "train",
        "DemoConfig": "demo",
        "run_demo": "demo",
        "TimelineConfig": "report",
        "run_timeline": "report",
        "read_timeline": "report",
        "timeline_figure": "report",
        "ReportConfig": "report",
        "run_report": "report",
    },
)
