"""`cluster/` and `infra/` checked against Ray's own schema and against the code: every job
entrypoint in a manifest is parsed by the real `emotiw` argument parser (a renamed flag fails
here), images match the package version and the pinned Ray / torch, buckets and service
accounts match the Terraform, and each IAM role can write only what its job writes."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import hcl2
import pytest
import ray
import yaml

import emotiw
from emotiw.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "cluster" / "kuberay"
IMAGE = re.compile(r"^ghcr\.io/emotiw/emotiw:(?P<version>[\w.]+)-(?P<variant>cpu|gpu)$")
BUCKET_REF = re.compile(r'aws_s3_bucket\.data\["(\w+)"\]')


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


def policy_access(tf: dict[str, Any], name: str) -> dict[str, set[str]]:
    """Bucket keys a policy document can read and write (by action)."""
    access: dict[str, set[str]] = {"read": set(), "write": set(), "list": set()}
    body = tf_blocks(tf, "data", "aws_iam_policy_document")[name]
    for st in body["statement"]:
        actions = set(unquote(st["actions"]))
        assert "*" not in actions and not any(a.endswith(":*") for a in actions), st
        refs = {m for r in st["resources"] for m in BUCKET_REF.findall(r)}
        if "s3:GetObject" in actions:
            access["read"] |= refs
        if actions & {"s3:PutObject", "s3:DeleteObject"}:
            access["write"] |= refs
        if "s3:ListBucket" in actions:
            access["list"] |= refs
    return access


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


def test_cluster_launcher_profiles_and_buckets_exist_in_terraform() -> None:
    tf = terraform()
    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    roles = job_roles(tf) | {f"{tf_default(tf, 'prefix')}-ray-head"}
    for node in config["available_node_types"].values():
        assert node["node_config"]["IamInstanceProfile"]["Name"] in roles
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
                        assert (res.get("requests") and res.get("limits")) or c["name"] == "submit"


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


def test_scoring_rayjob_runs_the_real_score_job_incrementally() -> None:
    job = rayjobs()["rayjob-score"]
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["generateName"]  # the CronJob creates a new one per run
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    [(name, argv)] = entrypoints(job["spec"]["entrypoint"])
    assert name == "score"
    args = parse_job(name, argv)
    assert args.skip_existing is True and "--skip-existing" in argv
    assert args.model.startswith("models:/")
    groups = {g["groupName"]: g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    gpus = int(groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
               ["nvidia.com/gpu"])  # fmt: skip
    assert 0 < args.gpus_per_model_actor <= gpus
    assert args.model_actors * args.gpus_per_model_actor <= gpus * groups["gpu"]["maxReplicas"]
    tf = terraform()
    bucket_of = {v: k for k, v in buckets(tf).items()}
    access = policy_access(tf, "scoring")
    assert bucket_of[s3_urls(args.input).pop()] in access["read"] & access["list"]
    assert bucket_of[s3_urls(args.output).pop()] in access["write"]
    accounts = {n["serviceAccountName"] for n in walk(job) if "serviceAccountName" in n}
    assert accounts == {f"{tf_default(tf, 'prefix')}-scoring"}


def test_training_rayjob_runs_extract_then_train_with_the_real_flags() -> None:
    job = rayjobs()["rayjob-train"]
    steps = entrypoints(job["spec"]["entrypoint"])
    assert [s for s, _ in steps] == ["extract", "extract", "train"]
    parsed = [parse_job(name, argv) for name, argv in steps]
    train = parsed[-1]
    assert {train.features, train.val_features} == {p.output for p in parsed[:2]}
    assert train.use_gpu
    groups = {g["groupName"]: g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    assert train.workers <= groups["gpu"]["maxReplicas"]
    tf = terraform()
    bucket_of = {v: k for k, v in buckets(tf).items()}
    access = policy_access(tf, "training")
    for extract in parsed[:2]:
        assert bucket_of[s3_urls(extract.videos).pop()] in access["read"]
        assert bucket_of[s3_urls(extract.output).pop()] in access["write"]
    accounts = {n["serviceAccountName"] for n in walk(job) if "serviceAccountName" in n}
    assert accounts == {f"{tf_default(tf, 'prefix')}-training"}


def test_jobs_and_mlflow_server_agree_on_the_tracking_uri() -> None:
    objects = {d["kind"]: d for d in docs(ROOT / "infra" / "k8s" / "mlflow.yaml")}
    service, deployment = objects["Service"], objects["Deployment"]
    port = service["spec"]["ports"][0]["port"]
    url = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}" \
          f".svc.cluster.local:{port}"  # fmt: skip
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for name, job in rayjobs().items():
        for step, argv in entrypoints(job["spec"]["entrypoint"]):
            if step in ("score", "train"):
                assert parse_job(step, argv).tracking_uri == url, name
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--port={port}" in args
    artifacts = next(a for a in args if a.startswith("--artifacts-destination="))
    tf = terraform()
    bucket_of = {v: k for k, v in buckets(tf).items()}
    assert bucket_of[s3_urls(artifacts).pop()] in policy_access(tf, "mlflow")["write"]


def test_schedule_creates_the_scoring_rayjob_from_the_same_manifest() -> None:
    kustomization = docs(KUBERAY / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (KUBERAY / resource).is_file()
    [generator] = kustomization["configMapGenerator"]
    assert generator["files"] == ["rayjob-score.yaml"]
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs(KUBERAY / "cronjob-score.yaml")}
    cron = objects[("CronJob", "emotiw-score-schedule")]
    assert len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [volume] = pod["volumes"]
    assert volume["configMap"]["name"] == generator["name"]
    [container] = pod["containers"]
    mount = container["volumeMounts"][0]["mountPath"]
    assert container["command"] == ["kubectl", "create", "-f", f"{mount}/rayjob-score.yaml"]
    role = objects[("Role", "emotiw-create-rayjobs")]
    assert any("rayjobs" in r["resources"] and "create" in r["verbs"] for r in role["rules"])
    binding = objects[("RoleBinding", "emotiw-scheduler-creates-rayjobs")]
    assert binding["roleRef"]["name"] == "emotiw-create-rayjobs"
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]


def test_service_accounts_assume_the_terraform_roles() -> None:
    tf = terraform()
    namespace = tf_default(tf, "namespace")
    accounts = [
        d for p in (KUBERAY / "serviceaccounts.yaml", ROOT / "infra/k8s/mlflow.yaml")
        for d in docs(p) if d["kind"] == "ServiceAccount"
    ]  # fmt: skip
    assert {a["metadata"]["name"] for a in accounts} == job_roles(tf)
    for account in accounts:
        assert account["metadata"]["namespace"] == namespace
        arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert arn.endswith(f":role/{account['metadata']['name']}")


# --- Terraform --------------------------------------------------------------------------------


def test_terraform_buckets_and_least_privilege_roles() -> None:
    tf = terraform()
    assert set(buckets(tf)) == {"input", "output", "models"}
    assert "aws_s3_bucket_public_access_block" in str(tf["resource"])
    scoring, training, mlflow = (policy_access(tf, n) for n in ("scoring", "training", "mlflow"))
    assert scoring["write"] == {"output"} and scoring["read"] >= {"input", "models"}
    assert training["write"] == {"models"} and "output" not in training["read"] | training["list"]
    assert mlflow["write"] == {"models"} and mlflow["read"] == {"models"}
    statements = tf_blocks(tf, "data", "aws_iam_policy_document")["mlflow"]["statement"]
    assert all("/mlflow/*" in r for st in statements if "s3:PutObject" in str(st["actions"])
               for r in st["resources"])  # fmt: skip
    # every role's web-identity trust names its own service account
    assume = tf_blocks(tf, "data", "aws_iam_policy_document")["assume"]
    values = str(assume["statement"][0]["condition"])
    assert "system:serviceaccount:${var.namespace}:${var.prefix}-${each.key}" in values


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
