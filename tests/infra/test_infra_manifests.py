"""Every manifest under infra/k8s is checked against a schema, not only parsed.

- Core kinds (Deployment, Service, StatefulSet, PVC, Secret, ConfigMap, Pod) against the
  Kubernetes OpenAPI schemas bundled offline in `kubernetes-validate`, in strict mode (unknown
  fields are errors, as with kubectl's default --validate=strict).
- RayCluster / RayJob against tests/schemas/kuberay-v1-subset.schema.json: our own schema for the
  fields we use, written from KubeRay's documented API (no package ships the KubeRay CRD schema).
  Every pod template inside them is validated as a core/v1 Pod with kubernetes-validate.
- Then what matters: GPU limits, autoscaling, token auth, one image tag, references between
  manifests and Secrets, MLflow auth/backends, and a light look at infra/Dockerfile.
"""

from __future__ import annotations

import configparser
import copy
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "infra" / "k8s"
KUBERAY_SCHEMA = REPO / "tests" / "schemas" / "kuberay-v1-subset.schema.json"
DOCKERFILE = REPO / "infra" / "Dockerfile"
CONSTRAINTS = REPO / "infra" / "constraints.txt"
BASIC_AUTH_INI = REPO / "infra" / "mlflow" / "basic_auth.ini"

# Validate against the newest Kubernetes schema kubernetes-validate bundles (all offline).
K8S_VERSION = kubernetes_validate.utils.latest_version()
CORE_KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Pod"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
}
CRD_KINDS = {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob")}
MANIFESTS = ["raycluster.yaml", "rayjob-pretrain.yaml", "mlflow.yaml", "secrets.example.yaml"]


def _project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


RAY_IMAGE = f"ghcr.io/radimagenet/radimagenet:{_project_version()}"
MLFLOW_IMAGE = f"ghcr.io/radimagenet/mlflow-server:{_project_version()}"


def _load(name: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((K8S_DIR / name).read_text()) if d is not None]
    assert docs, f"{name} holds no document"
    return docs


def _all_docs() -> list[tuple[str, int, dict]]:
    return [(name, i, doc) for name in MANIFESTS for i, doc in enumerate(_load(name))]


def _doc_id(item) -> str:
    name, i, doc = item
    return f"{name}#{i}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


ALL_DOCS = _all_docs()


def _only(name: str, kind: str, obj_name: str | None = None) -> dict:
    found = [
        d
        for d in _load(name)
        if d["kind"] == kind and (obj_name is None or d["metadata"]["name"] == obj_name)
    ]
    assert len(found) == 1, f"{name}: expected one {kind} {obj_name or ''}, found {len(found)}"
    return found[0]


def _k8s_validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def kuberay_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(KUBERAY_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _kuberay_errors(validator, doc: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)
    ]


def _pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, PodTemplateSpec) for every pod template inside a RayCluster or RayJob."""
    spec = doc["spec"]
    out = []
    cluster = spec if doc["kind"] == "RayCluster" else spec.get("rayClusterSpec")
    if cluster:
        out.append(("headGroupSpec", cluster["headGroupSpec"]["template"]))
        for group in cluster.get("workerGroupSpecs", []):
            out.append((f"workerGroupSpecs/{group['groupName']}", group["template"]))
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in spec:
        out.append(("submitterPodTemplate", spec["submitterPodTemplate"]))
    return out


def _as_pod(doc: dict, where: str, template: dict) -> dict:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{doc['metadata']['name']}-{where.split('/')[-1]}"[:63].lower()},
        "spec": template["spec"],
    }
    if "labels" in template.get("metadata", {}):
        pod["metadata"]["labels"] = template["metadata"]["labels"]
    return pod


def _gpu_groups(cluster_spec: dict) -> dict[str, dict]:
    return {
        g["template"]["metadata"]["labels"]["radimagenet/accelerator"]: g
        for g in cluster_spec["workerGroupSpecs"]
        if "radimagenet/accelerator" in g["template"]["metadata"].get("labels", {})
    }


def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"] + template["spec"].get("initContainers", [])


# --------------------------------------------------------------------------- schemas


def test_the_offline_k8s_schemas_are_recent():
    major, minor = (int(x) for x in K8S_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 30)


@pytest.mark.parametrize("item", ALL_DOCS, ids=_doc_id)
def test_every_document_has_a_known_kind(item):
    _, _, doc = item
    assert (doc.get("apiVersion"), doc.get("kind")) in CORE_KINDS | CRD_KINDS


@pytest.mark.parametrize(
    "item", [i for i in ALL_DOCS if (i[2]["apiVersion"], i[2]["kind"]) in CORE_KINDS], ids=_doc_id
)
def test_core_kinds_match_the_kubernetes_schema(item):
    _, _, doc = item
    _k8s_validate(doc)
    assert doc["metadata"].get("namespace") == "radimagenet"


@pytest.mark.parametrize(
    "item", [i for i in ALL_DOCS if (i[2]["apiVersion"], i[2]["kind"]) in CRD_KINDS], ids=_doc_id
)
def test_kuberay_kinds_match_our_crd_schema(item, kuberay_validator):
    _, _, doc = item
    assert _kuberay_errors(kuberay_validator, doc) == []
    assert doc["metadata"].get("namespace") == "radimagenet"


@pytest.mark.parametrize(
    "item,where",
    [
        (i, w)
        for i in ALL_DOCS
        if (i[2]["apiVersion"], i[2]["kind"]) in CRD_KINDS
        for w, _ in _pod_templates(i[2])
    ],
    ids=lambda x: _doc_id(x) if isinstance(x, tuple) else x,
)
def test_kuberay_pod_templates_are_valid_pods(item, where):
    _, _, doc = item
    template = dict(_pod_templates(doc))[where]
    _k8s_validate(_as_pod(doc, where, template))


def test_k8s_validator_has_teeth():
    deployment = copy.deepcopy(_only("mlflow.yaml", "Deployment", "mlflow"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        _k8s_validate(deployment)
    service = copy.deepcopy(_only("mlflow.yaml", "Service", "mlflow"))
    service["spec"]["ports"][0]["port"] = "five thousand"
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        _k8s_validate(service)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0),
            id="non-string-ray-start-param",
        ),
        pytest.param(lambda d: d["spec"]["workerGroupSpecs"][0].pop("maxReplicas"), id="missing-maxReplicas"),
        pytest.param(lambda d: d["spec"].__setitem__("enableInTreeAutoScaling", True), id="typo-in-spec"),
        pytest.param(lambda d: d["spec"]["authOptions"].__setitem__("mode", "on"), id="bad-auth-mode"),
        pytest.param(
            lambda d: d["spec"]["autoscalerOptions"].__setitem__("upscalingMode", "Fast"),
            id="bad-upscaling-mode",
        ),
        pytest.param(
            lambda d: d["spec"]["workerGroupSpecs"][0].__setitem__("groupName", "GPU_H100"),
            id="bad-group-name",
        ),
    ],
)
def test_kuberay_schema_has_teeth(kuberay_validator, mutate):
    cluster = copy.deepcopy(_only("raycluster.yaml", "RayCluster"))
    mutate(cluster)
    assert _kuberay_errors(kuberay_validator, cluster)


def test_rayjob_cannot_shut_down_a_selected_cluster(kuberay_validator):
    job = copy.deepcopy(_only("rayjob-pretrain.yaml", "RayJob"))
    del job["spec"]["rayClusterSpec"]
    job["spec"]["clusterSelector"] = {"ray.io/cluster": "radimagenet"}
    assert _kuberay_errors(kuberay_validator, job), "shutdownAfterJobFinishes needs a cluster the job owns"
    job["spec"]["shutdownAfterJobFinishes"] = False
    assert _kuberay_errors(kuberay_validator, job) == []


# --------------------------------------------------------------------------- Ray on Kubernetes


@pytest.fixture(scope="module")
def cluster_spec() -> dict:
    return _only("raycluster.yaml", "RayCluster")["spec"]


@pytest.fixture(scope="module")
def job() -> dict:
    return _only("rayjob-pretrain.yaml", "RayJob")


def _check_cluster_spec(spec: dict) -> None:
    import ray

    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"].get("dashboard-host", "0.0.0.0") == "0.0.0.0"
    head_ports = {
        p["containerPort"] for c in head["template"]["spec"]["containers"] for p in c.get("ports", [])
    }
    assert {6379, 8265} <= head_ports
    gpu = _gpu_groups(spec)
    assert set(gpu) == {"H100", "A100"}
    for accelerator, group in gpu.items():
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], accelerator
        assert group["maxReplicas"] >= 1
        (container,) = group["template"]["spec"]["containers"]
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "8", accelerator
        # GPUs are not overcommittable: requests, where given, equal limits.
        assert str(container["resources"].get("requests", {}).get("nvidia.com/gpu", "8")) == "8"
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{accelerator}: DataLoader/NCCL need a large /dev/shm"
    templates = [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        for c in _containers(template):
            assert c["image"] == RAY_IMAGE
            refs = {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
            assert {"radimagenet-s3", "radimagenet-mlflow-client"} <= refs
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True


def test_raycluster(cluster_spec):
    _check_cluster_spec(cluster_spec)


def test_rayjob_runs_pretraining_on_its_own_cluster(job):
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["radimagenet", "pretrain"]
    assert argv[argv.index("--config") + 1].endswith("pipelines/pretrain-resnet50.yaml")
    assert spec["shutdownAfterJobFinishes"] is True
    # Everything after the config file is a `radimagenet pretrain` key=value override.
    overrides = argv[argv.index("--config") + 2 :]
    assert all("=" in o for o in overrides), overrides
    flat = dict(o.split("=", 1) for o in overrides)
    worker_gpus = int(
        _gpu_groups(spec["rayClusterSpec"])["H100"]["template"]["spec"]["containers"][0]["resources"][
            "limits"
        ]["nvidia.com/gpu"]
    )
    assert int(flat["scaling.num_workers"]) == worker_gpus
    assert flat["scaling.use_gpu"] == "true"
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    _check_cluster_spec(spec["rayClusterSpec"])


def test_rayjob_overrides_are_valid_pretrain_config(job, monkeypatch):
    config_mod = pytest.importorskip("radimagenet.config")
    train_config = pytest.importorskip("radimagenet.tasks.pretrain")
    argv = shlex.split(job["spec"]["entrypoint"])
    overrides = [
        o.replace("${RADIMAGENET_BUCKET}", "s3://example-bucket/prefix")
        for o in argv[argv.index("--config") + 2 :]
    ]
    cfg = train_config.validate(config_mod.load_config(train_config.PretrainConfig, None, overrides))
    assert cfg.scaling.use_gpu is True
    assert cfg.data.manifest.startswith("s3://")


def test_rayjob_cluster_mirrors_raycluster(job, cluster_spec):
    job_spec = job["spec"]["rayClusterSpec"]

    def shape(spec):
        groups = {}
        for g in spec["workerGroupSpecs"]:
            t = g["template"]["spec"]
            groups[g["groupName"]] = (
                t.get("nodeSelector"),
                t.get("tolerations"),
                [(c["image"], c["resources"], c.get("envFrom")) for c in t["containers"]],
                g["maxReplicas"],
            )
        head = spec["headGroupSpec"]
        return (
            spec["rayVersion"],
            spec["authOptions"],
            head["rayStartParams"],
            [(c["image"], c["resources"], c.get("envFrom")) for c in head["template"]["spec"]["containers"]],
            groups,
        )

    assert shape(job_spec) == shape(cluster_spec)


# --------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def mlflow_deployment() -> dict:
    return _only("mlflow.yaml", "Deployment", "mlflow")


def _container_env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_mlflow_server_flags(mlflow_deployment):
    (container,) = mlflow_deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == MLFLOW_IMAGE
    argv = container["command"] + container["args"]
    assert argv[:2] == ["mlflow", "server"]
    flags = dict(a.split("=", 1) if "=" in a else (a, "") for a in argv[2:])
    assert flags["--app-name"] == "basic-auth"
    assert "--serve-artifacts" in flags
    assert flags["--backend-store-uri"].startswith("postgresql://")
    dest = flags["--artifacts-destination"]
    assert dest.startswith("s3://") or dest.startswith("$(RADIMAGENET_BUCKET)")
    if dest.startswith("$("):
        secret_keys = _secret_keys()
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        assert any("RADIMAGENET_BUCKET" in secret_keys.get(r, set()) for r in refs)
        assert any(v.startswith("s3://") for v in _secret_values("RADIMAGENET_BUCKET"))
    env = _container_env(container)
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"].endswith("/basic_auth.ini")
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "PGPASSWORD"):
        assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{name} must come from a Secret"


def _mlflow_auth_config_module():
    """MLflow's own reader of basic_auth.ini (mlflow/server/auth/config.py), loaded from its file:
    importing the package mlflow.server.auth would need the server-only Flask-WTF."""
    mlflow = pytest.importorskip("mlflow")
    path = Path(mlflow.__file__).parent / "server" / "auth" / "config.py"
    spec = importlib.util.spec_from_file_location("_radimagenet_mlflow_auth_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlflow_auth_config_is_the_repo_file_and_mlflow_reads_it(monkeypatch, tmp_path):
    configmap = _only("mlflow.yaml", "ConfigMap", "mlflow-auth-config")
    assert configmap["data"]["basic_auth.ini"] == BASIC_AUTH_INI.read_text()
    parser = configparser.ConfigParser()
    parser.read_string(BASIC_AUTH_INI.read_text())
    assert "admin_password" not in parser["mlflow"], "the admin password comes from a Secret"
    auth_config = _mlflow_auth_config_module()
    for var in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(BASIC_AUTH_INI))
    cfg = auth_config.read_auth_config()
    assert cfg.default_permission in {"READ", "EDIT", "MANAGE", "NO_PERMISSIONS"}
    assert cfg.database_uri.startswith("postgresql://")
    assert cfg.admin_username
    assert cfg.admin_password is None


def test_postgres_has_persistent_storage_and_the_auth_database():
    sts = _only("mlflow.yaml", "StatefulSet", "mlflow-postgres")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {
        m["name"]: m["mountPath"] for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert mounts[claim["metadata"]["name"]] == "/var/lib/postgresql/data"
    _k8s_validate(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "radimagenet"},
            "spec": claim["spec"],
        }
    )
    init = _only("mlflow.yaml", "ConfigMap", "mlflow-postgres-init")
    auth_db = configparser.ConfigParser()
    auth_db.read_string(BASIC_AUTH_INI.read_text())
    db_name = auth_db["mlflow"]["database_uri"].rsplit("/", 1)[1]
    assert any(f"CREATE DATABASE {db_name}" in sql for sql in init["data"].values())


def test_services_select_their_pods():
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in _load("mlflow.yaml")
        if d["kind"] in {"Deployment", "StatefulSet"}
    }
    for svc in (d for d in _load("mlflow.yaml") if d["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        matching = [n for n, labels in pods.items() if selector.items() <= labels.items()]
        assert matching, f"Service {svc['metadata']['name']} selects no pod"
    sts = _only("mlflow.yaml", "StatefulSet", "mlflow-postgres")
    assert _only("mlflow.yaml", "Service", sts["spec"]["serviceName"])


# --------------------------------------------------------------------------- references and secrets


def _secret_docs() -> list[dict]:
    return [d for d in _load("secrets.example.yaml") if d["kind"] == "Secret"]


def _secret_keys() -> dict[str, set[str]]:
    return {
        d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {})) for d in _secret_docs()
    }


def _secret_values(key: str) -> list[str]:
    return [d["stringData"][key] for d in _secret_docs() if key in d.get("stringData", {})]


def _walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_every_referenced_secret_and_configmap_exists():
    secrets = _secret_keys()
    configmaps = {d["metadata"]["name"] for _, _, d in ALL_DOCS if d["kind"] == "ConfigMap"}
    for _, _, doc in ALL_DOCS:
        for node in _walk(doc):
            if "secretKeyRef" in node:
                ref = node["secretKeyRef"]
                assert ref["key"] in secrets.get(ref["name"], set()), f"{ref} not in secrets.example.yaml"
            if "secretRef" in node:
                assert node["secretRef"]["name"] in secrets
            if "configMap" in node and "name" in node["configMap"]:
                assert node["configMap"]["name"] in configmaps


def test_secrets_example_holds_placeholders_only():
    for doc in _secret_docs():
        assert "data" not in doc, "use stringData with placeholders"
        for key, value in doc["stringData"].items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|USERNAME", key):
                assert value == "REPLACE_ME", f"{doc['metadata']['name']}.{key}"
    # And nothing secret anywhere else: no Secret objects, no credentials in URLs.
    for name in MANIFESTS:
        if name == "secrets.example.yaml":
            continue
        assert all(d["kind"] != "Secret" for d in _load(name)), name
        text = (K8S_DIR / name).read_text()
        assert not re.search(r"://[^/\s:@$]+:[^/\s@]+@", text), f"{name}: credentials in a URL"
        assert not re.search(r"AKIA[0-9A-Z]{16}", text)


# --------------------------------------------------------------------------- Dockerfile and pins


def _dockerfile_instructions() -> list[tuple[str, str]]:
    logical, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, rest = buf.partition(" ")
        logical.append((keyword.upper(), rest.strip()))
        buf = ""
    assert not buf, "dangling line continuation"
    return logical


def _stages() -> list[dict]:
    instructions = _dockerfile_instructions()
    global_args = {}
    for kw, rest in instructions:
        if kw == "FROM":
            break
        if kw == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            global_args[k] = v
    stages = []
    for kw, rest in instructions:
        if kw == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"image": image, "name": name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((kw, rest))
    return stages


def test_dockerfile_final_image_is_cuda_non_root_with_pinned_install():
    stages = _stages()
    final = stages[-1]
    assert final["image"].startswith("nvidia/cuda:") and "ubuntu" in final["image"], final["image"]
    build_stages = [s for s in stages if s["image"] == final["image"]]
    runs = " ".join(rest for s in build_stages for kw, rest in s["instructions"] if kw == "RUN")
    assert "--constraint infra/constraints.txt" in runs
    assert ".[train]" in runs
    users = [rest for kw, rest in final["instructions"] if kw == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}
    # The cluster launcher runs `docker run IMAGE bash`; KubeRay overrides the command: any
    # ENTRYPOINT must pass its arguments through.
    entrypoints = [json.loads(rest) for kw, rest in final["instructions"] if kw == "ENTRYPOINT"]
    assert not entrypoints or entrypoints[-1] in ([], ["/usr/bin/tini", "--"])
    env = " ".join(rest for kw, rest in final["instructions"] if kw == "ENV")
    assert "HOME=/home/ray" in env and "/opt/venv/bin" in env
    labels = " ".join(rest for kw, rest in final["instructions"] if kw == "LABEL")
    assert f'org.opencontainers.image.version="{_project_version()}"' in labels
    python_version = next(
        rest for kw, rest in _dockerfile_instructions() if kw == "ARG" and rest.startswith("PYTHON_VERSION=")
    )
    assert python_version == "PYTHON_VERSION=3.11"


def test_dockerfile_has_the_mlflow_server_target():
    names = {s["name"] for s in _stages()}
    assert "mlflow-server" in names
    assert f"--target mlflow-server -t {MLFLOW_IMAGE}" in DOCKERFILE.read_text()
    assert f"-t {RAY_IMAGE} ." in DOCKERFILE.read_text()


def test_dockerfile_copies_only_what_exists():
    for stage in _stages():
        for kw, rest in stage["instructions"]:
            if kw != "COPY" or "--from=" in rest:
                continue
            sources = [s for s in shlex.split(rest) if not s.startswith("--")][:-1]
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        assert not req.extras, f"{line}: pip rejects extras in a constraints file"
        (spec,) = req.specifier
        assert spec.operator == "==", f"{line}: pin exactly"
        pins[req.name.lower().replace("_", "-")] = spec.version
    return pins


def test_constraints_pin_the_stack():
    pins = _pins()
    assert pins["torch"] == "2.14.1"
    assert pins["torchvision"] == "0.29.1"
    assert pins["ray"] == "2.60.0"
    assert pins["mlflow"].startswith("3.17.")


def test_constraints_satisfy_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"]) + [
        r for extra in project.get("optional-dependencies", {}).values() for r in extra
    ]
    pins = _pins()
    for text in requirements:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        if name in pins:
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{name}=={pins[name]} violates {text}"
            )


def test_one_ray_version_everywhere():
    import ray

    version = _pins()["ray"]
    assert version == ray.__version__, "the image must run the Ray that the repository is tested with"
    assert f"assert ray.__version__ == '{version}'" in DOCKERFILE.read_text()
    for name in ("raycluster.yaml", "rayjob-pretrain.yaml"):
        text = (K8S_DIR / name).read_text()
        assert f'rayVersion: "{version}"' in text


def test_readme_documents_the_build():
    readme = (REPO / "infra" / "README.md").read_text()
    assert f"-t {RAY_IMAGE}" in readme
    assert f"-t {MLFLOW_IMAGE}" in readme
    for name in ["Dockerfile", "constraints.txt", *MANIFESTS, "basic_auth.ini"]:
        assert name in readme, f"infra/README.md does not mention {name}"
