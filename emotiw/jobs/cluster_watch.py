"""What the cluster lost while a run's pipeline ran, for the run's summary.

Ray redoes the work of a lost node by itself (Ray Data's actors are restarted elsewhere, their
tasks retried, lost blocks rebuilt from lineage), and the chunk commits keep every clip in the
table once. An operator still needs to know it happened: a run that lost a node took longer
and may have to be looked at. `NodeWatch` notes the nodes already dead when the run starts;
`report` names the ones that died since and counts, from Ray's state API, the tasks that
failed with them (each such task's block was redone) and the actors that were restarted.
Two GCS calls per run when nothing is lost; the state API is asked only after a loss."""

from __future__ import annotations

from collections import Counter
from typing import Any

_STATE_LIMIT = 10_000  # state-API rows read per question (failed tasks, this job's actors)


class NodeWatch:
    """Start it when the pipeline starts; `report()` after it ends ("" when nothing was lost)."""

    def __init__(self) -> None:
        import ray

        self.dead_before = {n["NodeID"] for n in ray.nodes() if not n["Alive"]}
        self.job_id = ray.get_runtime_context().get_job_id()

    def lost(self) -> list[dict[str, Any]]:
        """The nodes that died since the watch started (including ones that joined meanwhile)."""
        import ray

        return [n for n in ray.nodes() if not n["Alive"] and n["NodeID"] not in self.dead_before]

    def report(self) -> str:
        lost = self.lost()
        if not lost:
            return ""
        names = ", ".join(
            f"{n.get('NodeManagerAddress', '?')} ({n['NodeID'][:8]}: "
            f"{n.get('DeathReasonMessage') or 'no reason given'})"
            for n in lost
        )
        return f"lost {len(lost)} node(s) mid-run: {names}; redone: {self.redone()}"

    def redone(self) -> str:
        """Actor restarts and failed task attempts (each retried), by operator. The attempts are
        those Ray's task events recorded: a task that died with its node may have none."""
        try:
            from ray.util.state import list_actors, list_tasks

            tasks = list_tasks(
                filters=[("job_id", "=", self.job_id), ("state", "=", "FAILED")],
                limit=_STATE_LIMIT, detail=True, raise_on_missing_output=False,
            )  # fmt: skip
            actors = list_actors(
                filters=[("job_id", "=", self.job_id)],
                limit=_STATE_LIMIT, detail=True, raise_on_missing_output=False,
            )  # fmt: skip
        except Exception as e:  # no dashboard (a local Ray started without one): say so
            return f"not known (Ray's state API did not answer: {type(e).__name__})"
        failed = Counter(_operator(t.name) for t in tasks)
        restarts: Counter[str] = Counter()
        for a in actors:
            restarts[_operator(a.class_name)] += int(getattr(a, "num_restarts", 0) or 0)
        parts = [f"{n} {op} actor(s) restarted, the batches they held rerun"
                 for op, n in sorted(restarts.items()) if n]  # fmt: skip
        parts += [f"{n} failed {op} task attempt(s) retried" for op, n in sorted(failed.items())]
        return "; ".join(parts) or "nothing of this run was running there"


def _operator(name: str) -> str:
    """'MapWorker(MapBatches(ExtractActor)).submit' -> 'ExtractActor'."""
    inner = name.split(".")[0]
    while "(" in inner:
        inner = inner[inner.index("(") + 1 :].rstrip(")")
    return inner or name
