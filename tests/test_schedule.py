"""The scoring schedule's pod logic (cluster/kuberay/schedule.py) run as the pod runs it: the
real `score --dry-run` pre-check against a real local scores table, with a stand-in
`kubectl` on PATH that keeps RayJobs in a JSON file and moves each through KubeRay's
statuses (no Kubernetes API server runs here; the manifests' schemas are checked in
test_infra.py). Each tick either starts nothing (nothing new, or a RayJob still running) or
creates exactly one RayJob from the manifest and waits until it finishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, job_env, write_clip

SCHEDULE = ROOT / "cluster" / "kuberay" / "schedule.py"

FAKE_KUBECTL = r'''#!{python}
"""Stand-in for kubectl: RayJobs live in $FAKE_KUBE_STATE; `get rayjob NAME` advances the
job one KubeRay status per call (Initializing, Running, then $FAKE_KUBE_OUTCOME)."""
import json, os, sys, yaml
path = os.environ["FAKE_KUBE_STATE"]
state = json.load(open(path)) if os.path.exists(path) else {{"rayjobs": {{}}, "calls": []}}
args = sys.argv[1:]
state["calls"].append(args)
def opt(flag):
    return args[args.index(flag) + 1] if flag in args else None
def save():
    json.dump(state, open(path, "w"))
if args[:2] == ["get", "rayjobs"]:
    want = dict(kv.split("=") for kv in opt("-l").split(","))
    items = [j for j in state["rayjobs"].values()
             if want.items() <= j["metadata"]["labels"].items()]
    print(json.dumps({{"items": items}}))
elif args[0] == "create":
    job = yaml.safe_load(open(opt("-f")))
    name = job["metadata"]["generateName"] + f"{{len(state['rayjobs']):05d}}"
    job["metadata"]["name"] = name
    job["status"] = {{}}
    state["rayjobs"][name] = job
    print(f"rayjob.ray.io/{{name}}")
elif args[:2] == ["get", "rayjob"]:
    job = state["rayjobs"][args[2]]
    steps = [("Initializing", ""), ("Running", "RUNNING")]
    outcome = os.environ.get("FAKE_KUBE_OUTCOME", "SUCCEEDED")
    steps.append(("Complete" if outcome == "SUCCEEDED" else "Failed", outcome))
    n = job.get("polls", 0)
    job["polls"] = n + 1
    deploy, status = steps[min(n, len(steps) - 1)]
    job["status"] = {{"jobDeploymentStatus": deploy, "jobStatus": status}}
    print(json.dumps(job))
else:
    sys.exit(f"fake kubectl: unsupported {{args}}")
save()
'''


def _manifest(tmp_path: Path, clips: Path, table: Path, model: Path) -> Path:
    """The shipped scoring RayJob with the entrypoint pointed at local folders."""
    job = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob-score.yaml").read_text())
    job["spec"]["entrypoint"] = (
        f"python {ROOT}/jobs/score.py --input {clips} --output {table} --model {model} "
        "--skip-existing"
    )
    path = tmp_path / "rayjob-score.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _tick(tmp_path: Path, manifest: Path, outcome: str = "SUCCEEDED") -> tuple[int, str, list]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.format(python=sys.executable))
    kubectl.chmod(0o755)
    state = tmp_path / "kube.json"
    before = len(json.loads(state.read_text())["calls"]) if state.exists() else 0
    env = {**job_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_KUBE_STATE": str(state), "FAKE_KUBE_OUTCOME": outcome}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(SCHEDULE), "--manifest", str(manifest), "--poll-s", "0.1"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    calls = json.loads(state.read_text())["calls"][before:] if state.exists() else []
    return proc.returncode, proc.stdout + proc.stderr, calls


def _commit(table: Path, rows: list[dict]) -> None:
    """Rows as the scoring job commits them (only the key columns matter to a dry run)."""
    import pyarrow as pa

    from emotiw import modalities
    from emotiw.io.storage import arrow_filesystem
    from emotiw.tables.chunks import ChunkWriter
    from emotiw.tables.schema import score_schema

    schema = score_schema(modalities.specs())
    fs, root = arrow_filesystem(str(table))
    writer = ChunkWriter(fs, root, f"run-{len(rows)}", schema, 1000, 600,
                         partition=lambda: "scored_date=2026-11-26")  # fmt: skip
    writer.write(pa.Table.from_pylist(rows, schema=schema))
    writer.close()


@pytest.mark.e2e  # many seconds (a server, models): out of make test-fast
def test_schedule_starts_a_rayjob_only_for_new_clips_and_waits_for_it(
    tmp_path: Path, smoke_package: Path
) -> None:
    from emotiw.io.storage import iter_video_objects

    clips, table = tmp_path / "clips", tmp_path / "scores"
    model = smoke_package
    clips.mkdir()
    for name in ("a.mkv", "b.mkv"):
        write_clip(clips / name, n_frames=10)
    manifest = _manifest(tmp_path, clips, table, model)

    # 1. a new drop: the pre-check finds 2 new clips, one RayJob is created and waited for
    code, out, calls = _tick(tmp_path, manifest)
    assert code == 0, out
    assert "2 to score (2 new, 0 changed, 0 retry)" in out
    assert [c[0] for c in calls] == ["get", "create", "get", "get", "get"]
    assert calls[1][:3] == ["create", "-f", str(manifest)]
    assert "RayJob emotiw-score-00000 Complete, job SUCCEEDED" in out

    # 2. the job committed both clips (one with a transient error): only that one is pending
    objects = {o.uri.rsplit("/", 1)[1]: o for o in iter_video_objects(str(clips))}
    _commit(table, [{"uri": objects["a.mkv"].uri, "etag": objects["a.mkv"].etag},
                    {"uri": objects["b.mkv"].uri, "etag": objects["b.mkv"].etag,
                     "error_reason": "io", "retryable": True}])  # fmt: skip
    code, out, calls = _tick(tmp_path, manifest, outcome="FAILED")
    assert "1 to score (0 new, 0 changed, 1 retry)" in out
    assert code == 1, out  # the RayJob failed: so does the pod (the CronJob shows it)
    assert "Failed, job FAILED" in out and [c[0] for c in calls].count("create") == 1

    # 3. everything scored: no RayJob, no cluster, no GPU pod
    _commit(table, [{"uri": objects["b.mkv"].uri, "etag": objects["b.mkv"].etag}])
    code, out, calls = _tick(tmp_path, manifest)
    assert code == 0 and "nothing new to score; no RayJob started" in out, out
    assert [c[:2] for c in calls] == [["get", "rayjobs"]]

    # 4. a changed clip, but a RayJob of the schedule is still running (its pod was evicted):
    # nothing starts this tick, and no dry run runs either
    write_clip(clips / "a.mkv", n_frames=12)
    state = json.loads((tmp_path / "kube.json").read_text())
    state["rayjobs"]["emotiw-score-00000"]["status"] = {"jobDeploymentStatus": "Running"}
    (tmp_path / "kube.json").write_text(json.dumps(state))
    code, out, calls = _tick(tmp_path, manifest)
    assert code == 0 and "emotiw-score-00000 still running; nothing started" in out, out
    assert [c[:2] for c in calls] == [["get", "rayjobs"]]

    # 5. once it finished, the changed clip is found and scored
    state["rayjobs"]["emotiw-score-00000"]["status"] = {"jobDeploymentStatus": "Complete"}
    (tmp_path / "kube.json").write_text(json.dumps(state))
    code, out, calls = _tick(tmp_path, manifest)
    assert code == 0 and "1 to score (0 new, 1 changed, 0 retry)" in out, out
    assert [c[0] for c in calls].count("create") == 1


def test_a_failing_precheck_starts_nothing(tmp_path: Path) -> None:
    """A missing model (or missing weights, an unreachable registry or bucket) fails the dry
    run: the pod fails with the dry run's exit code and no RayJob is created."""
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "a.mkv", n_frames=10)
    manifest = _manifest(tmp_path, clips, tmp_path / "scores", tmp_path / "missing-model")
    code, out, calls = _tick(tmp_path, manifest)
    assert code == 67 and "missing_model" in out, out  # ExitCode.NO_MODEL
    assert "create" not in [c[0] for c in calls]
