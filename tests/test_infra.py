"""`cluster/` and `infra/` checked against Ray's own schema and against the code: every job
entrypoint in a manifest is parsed by the real `emotiw` argument parser (a renamed flag fails
here), images match the package version and the pinned Ray / torch, buckets and service
accounts match the Terraform, and each IAM role can write only what its job writes."""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest
import ray
import yaml

import emotiw
from emotiw.cli.commands import build_parser
from emotiw.jobs.extract import ExtractConfig
from emotiw.jobs.score import ScoreConfig

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "cluster" / "kuberay"
IMAGE = re.compile(r"^ghcr\.io/emotiw/emotiw:(?P<version>[\w.]+)-(?P<variant>cpu|gpu)$")
BUCKET_ARN = re.compile(r'\$\{aws_s3_bucket\.data\["(?P<bucket>\w+)"\]\.arn\}(?P<path>/.*)?')
WEIGHTS = "s3://emotiw-models/weights"  # $EMOTIW_WEIGHTS on every node (checked below)


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def walk(node: Any) -> Any:
    """Every dict inside a parsed YAML/JSON document."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def unquote(value: Any) -> Any:
    """python-hcl2 keeps string literals' quotes."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unquote(v) for v in value]
    return value


def terraform() -> dict[str, Any]:
    merged: dict[str, list[Any]] = {}
    for tf in sorted((ROOT / "infra" / "terraform").glob("*.tf")):
        for key, value in hcl2.load(tf.open()).items():
            merged.setdefault(key, []).extend(value if isinstance(value, list) else [value])
    return merged


def tf_blocks(tf: dict[str, Any], section: str, kind: str) -> dict[str, Any]:
    out = {}
    for block in tf.get(section, []):
        for k, named in block.items():
            if unquote(k) == kind:
                out.update({unquote(n): body for n, body in named.items()})
    return out


def tf_default(tf: dict[str, Any], name: str) -> str:
    for block in tf["variable"]:
        for k, body in block.items():
            if unquote(k) == name:
                return unquote(body["default"])
    raise KeyError(name)


def buckets(tf: dict[str, Any]) -> dict[str, str]:
    prefix = tf_default(tf, "prefix")
    (values,) = [b["buckets"] for b in tf["locals"] if "buckets" in b]
    return {k: unquote(v).replace("${var.prefix}", prefix) for k, v in values.items()}


def job_roles(tf: dict[str, Any]) -> set[str]:
    """The per-job IAM role names (``<prefix>-<key>`` of `local.roles`)."""
    prefix = tf_default(tf, "prefix")
    (values,) = [b["roles"] for b in tf["locals"] if "roles" in b]
    return {f"{prefix}-{k}" for k in values}


Grant = tuple[str, str, str]  # (list | read | write, bucket key, key prefix; "" = all)


def bucket_key(tf: dict[str, Any], url: str) -> tuple[str, str]:
    """``s3://emotiw-models/features/train`` -> ("models", "features/train/")."""
    bucket, _, path = url.removeprefix("s3://").partition("/")
    key = {v: k for k, v in buckets(tf).items()}[bucket]
    return key, (path.rstrip("/") + "/") if path else ""


def policy_grants(tf: dict[str, Any], name: str) -> set[Grant]:
    """What one policy document allows on the buckets, as (access, bucket, prefix)."""
    grants: set[Grant] = set()
    body = tf_blocks(tf, "data", "aws_iam_policy_document")[name]
    for st in body["statement"]:
        actions = set(unquote(st["actions"]))
        assert "*" not in actions and not any(a.endswith(":*") for a in actions), st
        for resource in unquote(st["resources"]):
            match = BUCKET_ARN.fullmatch(resource)
            if not match:
                assert not any(a.startswith("s3:") for a in actions), resource
                continue
            key, path = match["bucket"], (match["path"] or "").removeprefix("/")
            assert path == "" or path.endswith("*"), resource
            prefix = path.removesuffix("*")
            if "s3:ListBucket" in actions:
                assert not path, "ListBucket is a bucket-level action"
                grants.add(("list", key, ""))
            if "s3:GetObject" in actions:
                grants.add(("read", key, prefix))
            if actions & {"s3:PutObject", "s3:DeleteObject"}:
                grants.add(("write", key, prefix))
    return grants


def role_grants(tf: dict[str, Any], role: str) -> set[Grant]:
    """The union of a role's policy documents (`local.roles` in iam.tf); `role` without the
    prefix."""
    (roles,) = [b["roles"] for b in tf["locals"] if "roles" in b]
    return set().union(*(policy_grants(tf, unquote(d)) for d in roles[role]))


def covers(grant: Grant, need: Grant) -> bool:
    return grant[:2] == need[:2] and need[2].startswith(grant[2])


def entrypoints(text: str) -> list[tuple[str, list[str]]]:
    """`python /app/jobs/<job>.py args && ...` -> [(job, args)], each checked to exist."""
    out = []
    for part in text.split("&&"):
        argv = shlex.split(part)
        assert argv[0] == "python", part
        match = re.fullmatch(r"/app/jobs/(\w+)\.py", argv[1])
        assert match and (ROOT / "jobs" / f"{match[1]}.py").is_file(), argv[1]
        out.append((match[1], argv[2:]))
    return out


def parse_job(job: str, args: list[str]) -> Any:
    """The real CLI parser on a manifest's arguments; an unknown flag fails the test."""
    try:
        return build_parser().parse_args([job, *args])
    except SystemExit:
        pytest.fail(f"`emotiw {job}` rejects the manifest's arguments {args}")


def rayjobs() -> dict[str, dict[str, Any]]:
    return {p.stem: docs(p)[0] for p in sorted(KUBERAY.glob("rayjob-*.yaml"))}


def s3_urls(text: str) -> set[str]:
    return set(re.findall(r"s3://([a-z0-9.-]+)", text))


# --- where each stage runs and what it needs (IAM) ---------------------------------------------


def details_of(config: type, args: Any) -> str | None:
    """Where a job's flags put its detail tables (the per-face table), or None."""
    from emotiw.tables.details import detail_root

    default = config.__dataclass_fields__["details_output"].default  # type: ignore[attr-defined]
    return detail_root(getattr(args, "details_output", default), args.output)


def job_needs(tf: dict[str, Any], job: str, args: Any) -> dict[str, set[Grant]]:
    """What a job's code touches on S3, by where Ray runs it, read off the job's own flags:
    "driver" runs on the head (num-cpus 0, so nothing else does); "worker" is any worker node,
    since a CPU-only task or actor may land on a GPU node too. Rows reach the tables only
    through the driver (see the test below), so workers write no table."""

    def loc(url: str) -> tuple[str, str]:
        return bucket_key(tf, url)

    def read(url: str) -> set[Grant]:
        return {("read", *loc(url))}

    def commit(url: str) -> set[Grant]:  # a table: its lease, chunks, staging and keys
        return {("list", loc(url)[0], ""), ("read", *loc(url)), ("write", *loc(url))}

    def listing(url: str) -> set[Grant]:
        return {("list", loc(url)[0], "")}

    weights = read(WEIGHTS) | listing(WEIGHTS)
    # drivers check the weights are staged before any actor starts (weights.check_available)
    if job == "score" and getattr(args, "dry_run", False):  # the schedule's pre-check, read-only
        return {"driver": listing(args.input) | listing(args.output) | read(args.output) | weights}
    if job == "score":
        details = details_of(ScoreConfig, args)
        tables = commit(args.output) | (commit(details) if details else set())
        return {"driver": listing(args.input) | tables | weights,
                "worker": read(args.input) | weights}  # fmt: skip
    if job == "extract":
        labels = read(args.labels) if args.labels else set()
        details = details_of(ExtractConfig, args)
        tables = commit(args.output) | (commit(details) if details else set())
        return {"driver": listing(args.videos) | labels | tables | weights,
                "worker": read(args.videos) | weights}  # fmt: skip
    if job == "train":
        features = set().union(*(read(u) | listing(u) for u in (args.features, args.val_features)))
        state = commit(args.storage_path)  # Ray Train: experiment state and checkpoints
        return {"driver": features | weights | state, "worker": features | weights | state}
    raise AssertionError(job)


def cluster_needs(tf: dict[str, Any], jobs: list[tuple[str, Any]]) -> dict[str, set[Grant]]:
    needs: dict[str, set[Grant]] = {"driver": set(), "worker": set()}
    for job, args in jobs:
        for place, grants in job_needs(tf, job, args).items():
            needs[place] |= grants
    return needs


def assert_no_download(args: Any, where: str) -> None:
    """README: nothing downloads at job time on a cluster: every job there is run with
    ``--no-allow-download`` (weights come from the staged directory or an installed package;
    a missing file fails the driver's pre-check, exit 68)."""
    assert getattr(args, "weights__allow_download", True) is False, f"{where}: may download"


def test_no_cluster_job_downloads_weights() -> None:
    for name in rayjobs():
        for step, args in manifest_jobs(name):
            assert_no_download(args, f"{name}: {step}")


def manifest_jobs(name: str) -> list[tuple[str, Any]]:
    return [(step, parse_job(step, argv)) for step, argv in
            entrypoints(rayjobs()[name]["spec"]["entrypoint"])]  # fmt: skip


def assert_role_fits(tf: dict[str, Any], role: str, needs: set[Grant], where: str) -> None:
    """The role allows every need (the stage works) and nothing no stage there needs (least
    privilege); no write grant spans a whole bucket."""
    grants = role_grants(tf, role)
    missing = {n for n in needs if not any(covers(g, n) for g in grants)}
    assert not missing, f"{where}: role {role} lacks {sorted(missing)}"
    unused = {g for g in grants if not any(covers(g, n) for n in needs)}
    assert not unused, f"{where}: role {role} grants {sorted(unused)}, which nothing there needs"
    assert all(g[2] for g in grants if g[0] == "write"), f"{role} writes a whole bucket"


def role_of_account(tf: dict[str, Any], account: str) -> str:
    prefix = tf_default(tf, "prefix")
    assert account.startswith(f"{prefix}-"), account
    return account.removeprefix(f"{prefix}-")


def group_accounts(spec: dict[str, Any]) -> dict[str, set[str]]:
    """A RayCluster spec's service accounts: {"driver": head's, "worker": every group's}."""
    head = spec["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
    workers = {g["template"]["spec"]["serviceAccountName"] for g in spec["workerGroupSpecs"]}
    return {"driver": {head}, "worker": workers}


@pytest.mark.parametrize("name", ["rayjob-score", "rayjob-train"])
def test_rayjob_roles_fit_what_ray_places_on_each_node(name: str) -> None:
    tf = terraform()
    needs = cluster_needs(tf, manifest_jobs(name))
    job = rayjobs()[name]
    for place, accounts in group_accounts(job["spec"]["rayClusterSpec"]).items():
        assert len(accounts) == 1, (name, place, accounts)  # CPU tasks may land on GPU nodes
        assert_role_fits(tf, role_of_account(tf, accounts.pop()), needs[place], f"{name} {place}")


def test_long_lived_clusters_roles_fit_every_job() -> None:
    """The RayCluster and the launcher's cluster run any job: the heads hold every driver's
    needs, every worker node type every task's."""
    tf = terraform()
    jobs = manifest_jobs("rayjob-score") + manifest_jobs("rayjob-train")
    needs = cluster_needs(tf, jobs)
    spec = docs(KUBERAY / "raycluster.yaml")[0]["spec"]
    for place, accounts in group_accounts(spec).items():
        assert len(accounts) == 1
        role = role_of_account(tf, accounts.pop())
        assert_role_fits(tf, role, needs[place], f"raycluster {place}")
    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    prefix = tf_default(tf, "prefix")
    for name, node in config["available_node_types"].items():
        role = node["node_config"]["IamInstanceProfile"]["Name"].removeprefix(f"{prefix}-")
        place = "driver" if name == config["head_node_type"] else "worker"
        assert_role_fits(tf, role, needs[place], f"aws.yaml {name}")  # EC2 grants aside
    head = config["available_node_types"][config["head_node_type"]]
    assert head["node_config"]["IamInstanceProfile"]["Name"] == f"{prefix}-launcher-head"
    launcher = tf_blocks(tf, "data", "aws_iam_policy_document")["launcher"]
    passed = str([st for st in launcher["statement"] if "iam:PassRole" in str(st["actions"])])
    nodes = config["available_node_types"]
    workers = {n["node_config"]["IamInstanceProfile"]["Name"].removeprefix(f"{prefix}-")
               for k, n in nodes.items() if k != config["head_node_type"]}  # fmt: skip
    for role in workers:  # the head can hand the workers their profile, and only that
        assert f'aws_iam_role.job["{role}"]' in passed
    assert passed.count("aws_iam_role.job[") == len(workers)
    (instance,) = [b["instance_roles"] for b in tf["locals"] if "instance_roles" in b]
    assert set(unquote(instance)) == workers | {"launcher-head"}


def test_schedule_pod_role_is_the_dry_runs_read_only_needs() -> None:
    tf = terraform()
    cron = next(d for d in docs(KUBERAY / "cronjob-score.yaml") if d["kind"] == "CronJob")
    account = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    [(step, argv)] = entrypoints(rayjobs()["rayjob-score"]["spec"]["entrypoint"])
    args = parse_job(step, [*argv, "--dry-run"])
    needs = job_needs(tf, step, args)["driver"]
    assert_role_fits(tf, role_of_account(tf, account), needs, "schedule pod")
    assert not any(g[0] == "write" for g in role_grants(tf, role_of_account(tf, account)))


def test_rows_reach_tables_only_through_the_driver() -> None:
    """What lets workers hold no write grant: no Ray Data write (which would run as tasks on
    any node) anywhere in the package; tables are written by `chunks.ChunkWriter`, which only
    the jobs' drivers create (directly, and through `details.paired` for the detail
    tables; the scoring job's through `windowing.start_writers`, which only `run_score`
    calls)."""
    writes = re.compile(r"\.write_(parquet|datasink|json|csv|numpy|images|webdataset)\(")
    users = {}
    for path in (ROOT / "emotiw").rglob("*.py"):
        text = path.read_text()
        assert not writes.search(text), f"{path}: a Ray Data write runs on workers"
        if "ChunkWriter(" in text and path.name != "chunks.py":
            users[path.name] = path
    assert set(users) == {"windowing.py", "extract.py", "details.py"}, users
    expected = {  # and there only in the driver's functions, not in an actor
        ("details.py", "ChunkWriter"): {"paired"}, ("details.py", "paired"): set(),
        ("extract.py", "ChunkWriter"): {"run_extract"}, ("extract.py", "paired"): {"run_extract"},
        ("windowing.py", "ChunkWriter"): {"start_writers", "writer"},
        ("windowing.py", "paired"): {"start_writers"},
        ("score.py", "start_writers"): {"run_score"},
    }  # fmt: skip
    users["score.py"] = ROOT / "emotiw" / "jobs" / "score.py"
    for (name, made), want in expected.items():
        tree = ast.parse(users[name].read_text())
        owners = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                  for call in ast.walk(f) if isinstance(call, ast.Call)
                  and ast.unparse(call.func) == made}  # fmt: skip
        assert owners == want, (name, made, owners)


def test_every_node_finds_the_weights_where_the_roles_allow() -> None:
    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    assert f"EMOTIW_WEIGHTS={WEIGHTS}" in " ".join(config["setup_commands"])
    for path in [*KUBERAY.glob("ray*.yaml"), KUBERAY / "cronjob-score.yaml"]:
        for node in walk(
            [d for d in docs(path) if d["kind"] in ("RayJob", "RayCluster", "CronJob")]
        ):
            if "containers" in node:
                for c in node["containers"]:
                    if c["name"] == "ray-job-submitter":  # runs `ray job submit`, no model
                        continue
                    env = {e["name"]: e.get("value") for e in c.get("env", [])}
                    assert env.get("EMOTIW_WEIGHTS") == WEIGHTS, (path, c["name"])


def test_service_accounts_assume_the_terraform_roles() -> None:
    tf = terraform()
    namespace = tf_default(tf, "namespace")
    accounts = [
        d for p in (KUBERAY / "serviceaccounts.yaml", ROOT / "infra/k8s/mlflow.yaml")
        for d in docs(p) if d["kind"] == "ServiceAccount"
    ]  # fmt: skip
    # every role a pod takes has its account; launcher-head is an EC2 instance profile only
    assert {a["metadata"]["name"] for a in accounts} == job_roles(tf) - {"emotiw-launcher-head"}
    for account in accounts:
        assert account["metadata"]["namespace"] == namespace
        arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert arn.endswith(f":role/{account['metadata']['name']}")
    used = {n["serviceAccountName"] for p in KUBERAY.glob("*.yaml") for d in docs(p)
            for n in walk(d) if "serviceAccountName" in n}  # fmt: skip
    assert used == {a["metadata"]["name"] for a in accounts} - {"emotiw-mlflow"}
    # every role's web-identity trust names its own service account
    assume = tf_blocks(tf, "data", "aws_iam_policy_document")["assume"]
    values = str(assume["statement"][0]["condition"])
    assert "system:serviceaccount:${var.namespace}:${var.prefix}-${each.key}" in values


def test_terraform_buckets_and_mlflow_role() -> None:
    tf = terraform()
    assert set(buckets(tf)) == {"input", "output", "models"}
    for kind in ("versioning", "server_side_encryption_configuration", "public_access_block",
                 "lifecycle_configuration", "logging"):  # fmt: skip
        body = tf_blocks(tf, "resource", f"aws_s3_bucket_{kind}")["data"]
        assert unquote(body["for_each"]) == "${local.buckets}", kind  # every data bucket
    assert role_grants(tf, "mlflow") == {("list", "models", ""), ("read", "models", "mlflow/"),
                                         ("write", "models", "mlflow/")}  # fmt: skip
    objects = {d["kind"]: d for d in docs(ROOT / "infra" / "k8s" / "mlflow.yaml")}
    args = " ".join(objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"])
    artifacts = re.search(r"--artifacts-destination=(\S+)", args)[1]
    assert ("write", *bucket_key(tf, artifacts)) in role_grants(tf, "mlflow")


# --- Ray cluster launcher ----------------------------------------------------------------------


def test_cluster_launcher_yaml_passes_rays_own_schema_and_validation() -> None:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    validate_config(prepare_config(config))  # Ray's checks beyond the schema
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    cpu = [n for n, t in types.items() if not t["resources"].get("GPU") and t["resources"]["CPU"]]
    assert len(gpu) == 1 and cpu, "one GPU node type (models) and a CPU node type (extraction)"
    for node in types.values():
        if node is not types[config["head_node_type"]]:
            assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"]
    assert IMAGE.match(gpu[0]["docker"]["worker_image"])["variant"] == "gpu"
    for image in (config["docker"]["image"], config["docker"]["worker_image"]):
        assert IMAGE.match(image)["variant"] == "cpu"
        assert IMAGE.match(image)["version"] == emotiw.__version__
    tf = terraform()
    assert s3_urls(yaml.safe_dump(config)) <= set(buckets(tf).values())


# --- KubeRay and Kubernetes -------------------------------------------------------------------


def test_kubernetes_manifests_have_the_required_fields() -> None:
    files = [*KUBERAY.glob("*.yaml"), *(ROOT / "infra" / "k8s").glob("*.yaml")]
    assert len(files) >= 6
    for path in files:
        for doc in docs(path):
            if doc.get("kind") == "Kustomization":
                continue
            assert doc.get("apiVersion") and doc.get("kind"), path
            meta = doc["metadata"]
            assert meta.get("name") or meta.get("generateName"), path
            for node in walk(doc):
                if "containers" in node:
                    for c in node["containers"]:
                        assert c.get("name") and c.get("image"), (path, c)
                        res = c.get("resources", {})
                        assert res.get("requests") and res.get("limits"), (path, c["name"])


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = [("raycluster", docs(KUBERAY / "raycluster.yaml")[0]["spec"])]
    specs += [(name, job["spec"]["rayClusterSpec"]) for name, job in rayjobs().items()]
    return specs


@pytest.mark.parametrize(
    "name,spec", _cluster_specs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_ray_cluster_specs_match_ray_and_image(name: str, spec: dict[str, Any]) -> None:
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
    for node in [head, *groups.values()]:
        for c in node["template"]["spec"]["containers"]:
            image = IMAGE.match(c["image"])
            assert image and image["version"] == emotiw.__version__, c["image"]
            wants_gpu = "nvidia.com/gpu" in c["resources"]["limits"]
            assert (image["variant"] == "gpu") == wants_gpu, (name, c["image"])


def assert_hardened(pod: dict[str, Any], where: str) -> None:
    """A pod as the schedule's and MLflow's: non-root, the runtime's seccomp profile, and
    every container without privilege escalation, capabilities or a writable root."""
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, where
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
    for c in pod["containers"]:
        own = c["securityContext"]
        assert own["allowPrivilegeEscalation"] is False, (where, c["name"])
        assert own["readOnlyRootFilesystem"] is True, (where, c["name"])
        assert own["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
        volumes = {v["name"] for v in pod.get("volumes", [])}
        assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, (where, c["name"])
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), (where, c["name"])


@pytest.mark.parametrize(
    "name,spec", _cluster_specs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_ray_cluster_requires_a_token_and_runs_hardened(name: str, spec: dict) -> None:
    assert spec["authOptions"] == {"mode": "token"}, name  # KubeRay's Secret, on every pod
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert_hardened(pod, f"{name} {group.get('groupName', 'head')}")
        mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert {"/tmp", "/dev/shm", "/home/ray/.cache"} <= mounts, name  # Ray, object store


def test_only_ray_pods_the_submitter_and_the_operator_reach_the_ray_ports() -> None:
    """The NetworkPolicy selects every KubeRay pod; Ray pods reach each other on any port,
    the RayJobs' submitter pods (hardened, labelled as the policy expects) and the operator
    reach the job API alone; the schedule applies the policy."""
    [policy] = docs(KUBERAY / "networkpolicy.yaml")
    ray_pods = {"matchExpressions": [{"key": "ray.io/node-type", "operator": "Exists"}]}
    assert policy["spec"]["podSelector"] == ray_pods
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    peers, api = policy["spec"]["ingress"]
    assert peers == {"from": [{"podSelector": ray_pods}]}  # no ports: every Ray port
    assert api["ports"] == [{"protocol": "TCP", "port": 8265}]
    submitter = api["from"][0]["podSelector"]["matchLabels"]
    operator = api["from"][1]
    assert operator["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    for job_name, job in rayjobs().items():
        template = job["spec"]["submitterPodTemplate"]
        assert template["metadata"]["labels"].items() >= submitter.items(), job_name
        assert_hardened(template["spec"], f"{job_name} submitter")
        assert template["spec"]["automountServiceAccountToken"] is False
        assert IMAGE.match(template["spec"]["containers"][0]["image"])["variant"] == "cpu"
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    assert "networkpolicy.yaml" in kustomization["resources"]


def test_cluster_launcher_nodes_require_the_token_and_hide_the_job_api() -> None:
    """Every node of `cluster/aws.yaml` starts Ray with token auth and gets the operator's
    token; the dashboard (the job API) listens on the head's loopback (an SSH tunnel)."""
    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        [start] = [c for c in config[key] if "ray start" in c]
        assert start.startswith("export RAY_AUTH_MODE=token;"), start
    [head] = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head


def test_scoring_rayjob_runs_the_real_score_job_incrementally() -> None:
    job = rayjobs()["rayjob-score"]
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["generateName"]  # the schedule creates a new one per run
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    [(name, argv)] = entrypoints(job["spec"]["entrypoint"])
    assert name == "score"
    args = parse_job(name, argv)
    assert args.skip_existing is True and "--skip-existing" in argv
    assert args.model == "models:/emotiw@champion"  # only `emotiw promote` moves it
    groups = {g["groupName"]: g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    gpus = int(groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
               ["nvidia.com/gpu"])  # fmt: skip
    assert 0 < float(args.gpus_per_model_actor) <= gpus
    assert (
        args.model_actors * float(args.gpus_per_model_actor) <= gpus * groups["gpu"]["maxReplicas"]
    )
    # no GPU pod before the model pool asks for one (an explicit GPU request reaches the
    # autoscaler before any GPU node is up)
    assert groups["gpu"]["minReplicas"] == groups["gpu"]["replicas"] == 0


def test_training_rayjob_keeps_ray_train_state_on_s3() -> None:
    job = rayjobs()["rayjob-train"]
    steps = entrypoints(job["spec"]["entrypoint"])
    assert [s for s, _ in steps] == ["extract", "extract", "train"]
    parsed = [parse_job(name, argv) for name, argv in steps]
    train = parsed[-1]
    assert {train.features, train.val_features} == {p.output for p in parsed[:2]}
    assert train.use_gpu
    # multi-node Ray Train needs storage every node reaches: checkpoints on S3, not /tmp
    assert train.storage_path and train.storage_path.startswith("s3://")
    groups = {g["groupName"]: g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    assert train.workers <= groups["gpu"]["maxReplicas"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    # drivers only (train driver measured flat at 520 MiB, benchmarks/train_memory.py)
    assert head["resources"]["limits"]["memory"] == "8Gi"


def test_jobs_and_mlflow_server_agree_on_the_tracking_uri() -> None:
    objects = {d["kind"]: d for d in docs(ROOT / "infra" / "k8s" / "mlflow.yaml")}
    service, deployment = objects["Service"], objects["Deployment"]
    port = service["spec"]["ports"][0]["port"]
    url = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}" \
          f".svc.cluster.local:{port}"  # fmt: skip
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    for name, job in rayjobs().items():
        for step, argv in entrypoints(job["spec"]["entrypoint"]):
            if step in ("score", "train"):
                assert parse_job(step, argv).tracking_uri == url, name
    args = " ".join(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    assert f"--port={port}" in args


def test_schedule_prechecks_and_waits_with_the_same_manifest() -> None:
    kustomization = docs(KUBERAY / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (KUBERAY / resource).is_file()
    [generator] = kustomization["configMapGenerator"]
    assert generator["files"] == ["rayjob-score.yaml", "schedule.py"]
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs(KUBERAY / "cronjob-score.yaml")}
    cron = objects[("CronJob", "emotiw-score-schedule")]
    assert len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    # the pod outlives the RayJob it waits for, so Forbid covers the whole run
    assert job["activeDeadlineSeconds"] > rayjobs()["rayjob-score"]["spec"]["activeDeadlineSeconds"]
    pod = job["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == generator["name"]
    [container] = pod["containers"]
    assert IMAGE.match(container["image"])["variant"] == "cpu"  # python, emotiw and kubectl
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert container["command"] == ["python", f"{mount}/schedule.py", "--manifest",
                                    f"{mount}/rayjob-score.yaml"]  # fmt: skip
    role = objects[("Role", "emotiw-create-rayjobs")]
    verbs = {v for r in role["rules"] if "rayjobs" in r["resources"] for v in r["verbs"]}
    schedule = (KUBERAY / "schedule.py").read_text()
    used = set(re.findall(r'kubectl\(\s*"(\w+)"', schedule))
    assert used == {"get", "create"} and used <= verbs and "list" in verbs  # get -l lists
    binding = objects[("RoleBinding", "emotiw-schedule-creates-rayjobs")]
    assert binding["roleRef"]["name"] == "emotiw-create-rayjobs"
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    # the pre-check is the RayJob's own entrypoint plus --dry-run, which the parser accepts
    [(step, argv)] = entrypoints(rayjobs()["rayjob-score"]["spec"]["entrypoint"])
    assert parse_job(step, [*argv, "--dry-run"]).dry_run is True
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    assert "/usr/local/bin/kubectl" in dockerfile and "sha256sum --check" in dockerfile


# --- schemas and static scans ------------------------------------------------------------------

SCHEMAS = Path(__file__).parent / "schemas"
K8S_VERSION = "1.31.0"  # the oldest Kubernetes the manifests target (kubectl in the image)


def strict(schema: Any) -> Any:
    """An OpenAPI CRD schema as `kubectl --validate=strict` applies it: an unknown field is
    an error (objects with fixed properties and no preserve-unknown-fields)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):  # fmt: skip
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_validator(kind: str) -> Any:
    import gzip

    import jsonschema

    data = json.loads(gzip.decompress((SCHEMAS / f"kuberay-v1.7.0-{kind}.json.gz").read_bytes()))
    schema = strict(data["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by Kubernetes
    return jsonschema.Draft7Validator(schema)


def manifest_docs() -> list[tuple[str, dict[str, Any]]]:
    files = [*sorted(KUBERAY.glob("*.yaml")), *sorted((ROOT / "infra" / "k8s").glob("*.yaml"))]
    return [(f"{p.name}:{d['kind']}", d) for p in files for d in docs(p)
            if d.get("kind") != "Kustomization"]  # fmt: skip


def validate_manifest(doc: dict[str, Any]) -> list[str]:
    """Schema errors of one manifest: KubeRay kinds against the vendored CRD schemas, every
    other kind against Kubernetes' own (kubernetes-validate, strict)."""
    import kubernetes_validate

    if doc["apiVersion"].startswith("ray.io/"):
        kind = {"RayJob": "rayjobs", "RayCluster": "rayclusters"}[doc["kind"]]
        return [f"{'.'.join(map(str, e.path))}: {e.message}"
                for e in crd_validator(kind).iter_errors(doc)]  # fmt: skip
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)]
    return []


@pytest.mark.parametrize("name,doc", manifest_docs(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifests_pass_kubernetes_and_kuberay_schemas(name: str, doc: dict[str, Any]) -> None:
    assert validate_manifest(doc) == [], name


def test_schema_validation_rejects_misspelt_and_mistyped_fields() -> None:
    """The validation above can fail: a misspelt field and a wrong type in a RayJob, and a
    misspelt field in a CronJob, are each reported."""
    import copy

    job = copy.deepcopy(rayjobs()["rayjob-score"])
    job["spec"]["shutdownAfterJobFinish"] = True
    assert any("shutdownAfterJobFinish" in e for e in validate_manifest(job))
    job = copy.deepcopy(rayjobs()["rayjob-score"])
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert validate_manifest(job)
    cron = copy.deepcopy(next(d for d in docs(KUBERAY / "cronjob-score.yaml")
                              if d["kind"] == "CronJob"))  # fmt: skip
    cron["spec"]["concurencyPolicy"] = cron["spec"].pop("concurrencyPolicy")
    assert validate_manifest(cron)


def checkov(folder: Path) -> dict[str, Any]:
    """checkov (its own virtualenv, infra/scan-requirements.txt, built by `make test`) over
    one folder; its JSON report by framework."""
    exe = ROOT / ".venv-scan" / "bin" / "checkov"
    assert exe.exists(), "run `make test` (it builds .venv-scan with checkov)"
    proc = subprocess.run(
        [str(exe), "-d", str(folder), "--framework", "terraform", "kubernetes", "dockerfile",
         "-o", "json", "--skip-download"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    return {r["check_type"]: r for r in (report if isinstance(report, list) else [report])}


@pytest.mark.parametrize("folder", ["infra", "cluster"])
def test_checkov_finds_nothing_unjustified(folder: str) -> None:
    """No failed check; every suppression carries its reason inline."""
    reports = checkov(ROOT / folder)
    expected = {"infra": {"terraform", "kubernetes", "dockerfile"}, "cluster": {"kubernetes"}}
    assert set(reports) == expected[folder]  # every file type was scanned
    for kind, report in reports.items():
        summary = report["summary"]
        assert summary["parsing_errors"] == 0 and summary["resource_count"] > 0, kind
        failed = [(c["check_id"], c["resource"], c["file_path"])
                  for c in report["results"]["failed_checks"]]  # fmt: skip
        assert not failed, f"{kind}: {failed}"
        for c in report["results"]["skipped_checks"]:
            reason = c["check_result"].get("suppress_comment") or ""
            assert len(reason.split()) >= 5, f"{c['check_id']} on {c['resource']}: no reason"


# --- the image --------------------------------------------------------------------------------


def test_dockerfile_matches_ray_torch_and_makefile_pins() -> None:
    text = (ROOT / "infra" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM rayproject/ray:([\d.]+)-py(\d+)-(\w+)", text, re.M)
    assert {b[0] for b in bases} == {ray.__version__} and {b[1] for b in bases} == {"311"}
    assert "WORKDIR /app" in text and "COPY --chown=ray:users jobs ./jobs" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package in ("torch", "torchvision"):
        pin = re.search(rf'"{package}==([\d.]+)"', pyproject)[1]
        assert f"{package}=={pin}" in text, package
    makefile = (ROOT / "Makefile").read_text()
    for pin in re.findall(r"--no-deps (\S+==\S+)", makefile):
        assert f"--no-deps {pin}" in text, pin
    assert "pip install --no-cache-dir -e ." in text


# --- the cluster tutorial ----------------------------------------------------------------------


def readme_cluster_section() -> str:
    text = (ROOT / "docs" / "tutorials" / "score-s3-cluster.md").read_text()
    start = text.index("## Run on a cluster")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def readme_commands() -> list[list[str]]:
    """Every command of the section's ``sh`` blocks (continuation lines joined)."""
    blocks = re.findall(r"```sh\n(.*?)```", readme_cluster_section(), re.S)
    lines = " ".join(blocks).replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        for part in line.split("&&"):
            if part.strip():
                out.append(shlex.split(part))
    return out


def check_command(argv: list[str], tf: dict[str, Any]) -> None:
    """A README command names files that exist and arguments its tool accepts."""

    def exists(path: str) -> None:
        assert (ROOT / path).exists(), f"{' '.join(argv)}: {path} does not exist"

    def python_job(rest: list[str]) -> None:
        assert rest[0] == "python" and rest[1].startswith("jobs/"), rest
        exists(rest[1])
        assert_no_download(parse_job(Path(rest[1]).stem, rest[2:]), " ".join(rest))

    while "=" in argv[0] and argv[0].split("=")[0].isupper():  # VAR=value before a command
        assert argv[0].split("=")[0].startswith("RAY_AUTH_"), argv  # only what auth needs
        argv = argv[1:]
    tool = argv[0]
    if tool == "docker" and argv[1] == "build":
        exists(argv[argv.index("-f") + 1])
        assert IMAGE.match(argv[argv.index("-t") + 1])["version"] == emotiw.__version__
        if "--build-arg" in argv:
            assert argv[argv.index("--build-arg") + 1] in ("VARIANT=cpu", "VARIANT=gpu")
    elif tool == "docker" and argv[1] == "push":
        assert IMAGE.match(argv[2]), argv
    elif tool == "terraform":
        folder = argv[1].removeprefix("-chdir=")
        assert list((ROOT / folder).glob("*.tf")), folder
        assert argv[2] in ("init", "apply", "plan", "output")
        declared = {unquote(k) for block in tf["variable"] for k in block}
        for i, arg in enumerate(argv):
            if arg == "-var":
                assert argv[i + 1].split("=")[0] in declared, argv[i + 1]
    elif tool == "kubectl":
        assert argv[1] in ("apply", "create"), argv
        if "-f" in argv:
            exists(argv[argv.index("-f") + 1])
        else:
            exists(f"{argv[argv.index('-k') + 1]}/kustomization.yaml")
    elif tool == "python":
        python_job(argv)
    elif tool == "ray" and argv[1] in ("up", "dashboard"):
        exists(argv[2])
    elif tool == "ray" and argv[1] == "get-auth-token":
        assert argv[2:] == ["--generate"], argv
    elif tool == "ray" and argv[1:3] == ["job", "submit"]:
        python_job(argv[argv.index("--") + 1 :])
    else:
        raise AssertionError(f"the README runs {argv}: teach this test what it checks")


def test_readme_cluster_section_commands_parse_and_name_existing_files() -> None:
    tf = terraform()
    commands = readme_commands()
    assert {c[0] for c in commands} >= {"docker", "terraform", "kubectl", "python", "ray"}
    for argv in commands:
        check_command(argv, tf)
    # every repository path the prose names exists
    paths = set(re.findall(r"`((?:cluster|infra|tests|jobs|emotiw)/[\w./-]*)`",
                           readme_cluster_section()))  # fmt: skip
    assert len(paths) >= 6
    for path in paths:
        assert (ROOT / path).exists(), path
    with pytest.raises(AssertionError):  # and the check can fail
        check_command(["kubectl", "apply", "-f", "cluster/kuberay/missing.yaml"], tf)
    with pytest.raises(pytest.fail.Exception):
        check_command(["python", "jobs/score.py", "--no-such-flag"], tf)
