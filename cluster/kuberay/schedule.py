"""The scoring schedule's pod (cronjob-score.yaml): start a scoring RayJob only when there is
something to score, and wait for it to finish, so that the CronJob's `concurrencyPolicy:
Forbid` covers the whole run and an empty drop starts no cluster and no GPU node.

Each tick:
1. A RayJob of this schedule that has not finished (its pod was evicted, say): do nothing
   this tick; the lease would stop a second writer anyway, but it would start a cluster.
2. Pre-check: the RayJob's own entrypoint with ``--dry-run`` runs in this pod (a read-only
   listing against the scores table: no Ray, no GPU, no model download). Exit 4: nothing new.
3. ``kubectl create`` the RayJob from the same manifest and poll it until KubeRay says it is
   Complete or Failed; this pod's exit status is the job's.

Why not KubeRay's RayCronJob: in the pinned KubeRay (1.7.0) it is alpha behind a feature gate
that is off by default, has no concurrency policy and cannot skip a tick, so every hour would
start a cluster and GPU pods even when nothing arrived.

Standard library only besides PyYAML (the emotiw image has both); `kubectl` comes from an
init container.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from typing import Any

import yaml

NOTHING_NEW = 4  # emotiw.core.errors.ExitCode.NOTHING_NEW: the dry run found nothing to score
FINISHED = {"Complete", "Failed", "ValidationFailed"}  # KubeRay JobDeploymentStatus


def kubectl(*args: str) -> str:
    proc = subprocess.run(["kubectl", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def unfinished(selector: str, namespace: str) -> list[str]:
    """Names of this schedule's RayJobs that KubeRay has not finished."""
    items = json.loads(kubectl("get", "rayjobs", "-n", namespace, "-l", selector, "-o", "json"))
    return [
        job["metadata"]["name"]
        for job in items["items"]
        if job.get("status", {}).get("jobDeploymentStatus") not in FINISHED
    ]


def precheck(entrypoint: str) -> int:
    """The RayJob's entrypoint as a dry run; its exit status (0: work to do, 4: none)."""
    argv = shlex.split(entrypoint)
    if argv[0] == "python":
        argv[0] = sys.executable
    proc = subprocess.run([*argv, "--dry-run"])
    return proc.returncode


def wait(name: str, namespace: str, poll_s: float) -> dict[str, Any]:
    """Poll the RayJob until KubeRay says it finished; its status."""
    while True:
        status = json.loads(kubectl("get", "rayjob", name, "-n", namespace, "-o", "json")).get(
            "status", {}
        )
        if status.get("jobDeploymentStatus") in FINISHED:
            return status
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="the scoring RayJob manifest")
    parser.add_argument("--poll-s", type=float, default=30.0, help="status poll interval")
    args = parser.parse_args(argv)

    with open(args.manifest) as f:
        job = yaml.safe_load(f)
    namespace = job["metadata"]["namespace"]
    labels = job["metadata"]["labels"]
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

    running = unfinished(selector, namespace)
    if running:
        print(f"schedule: {', '.join(running)} still running; nothing started this tick")
        return 0
    code = precheck(job["spec"]["entrypoint"])
    if code == NOTHING_NEW:
        print("schedule: nothing new to score; no RayJob started")
        return 0
    if code != 0:
        print(f"schedule: the pre-check failed (exit {code}); no RayJob started")
        return code
    name = kubectl("create", "-f", args.manifest, "-o", "name").strip().split("/")[-1]
    print(f"schedule: created RayJob {name}; waiting for it to finish", flush=True)
    status = wait(name, namespace, args.poll_s)
    print(
        f"schedule: RayJob {name} {status.get('jobDeploymentStatus')}, "
        f"job {status.get('jobStatus') or '-'} {status.get('message') or ''}".rstrip()
    )
    return 0 if status.get("jobStatus") == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
