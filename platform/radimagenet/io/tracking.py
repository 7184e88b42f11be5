"""The only module that talks to MLflow: runs, params, inputs, metrics, the backbone registry.

Everything goes through an explicit ``MlflowClient`` and a run id (no ``mlflow.start_run`` global
state), so the driver creates the run and any Ray worker can log to it by id.

    uri = tracking.tracking_uri()                 # tracking.uri or MLFLOW_TRACKING_URI, checked
    run_id, resumed = tracking.start_or_resume_run(uri, "radimagenet-pretrain", "my-run")
    tracking.log_metrics(uri, run_id, {"val/accuracy": 0.8}, step=120)
    version = tracking.register_backbone(uri, run_id, "/tmp/backbone", "radimagenet-resnet50")

A run is found again by its tag ``radimagenet.run_name``: a resumed or restarted job continues the
same MLflow run instead of creating a duplicate.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from typing import Any

from radimagenet.errors import RadImageNetError

RUN_NAME_TAG = "radimagenet.run_name"
BACKBONE_DIR = "backbone"  # artifact path of the registered backbone inside the run
RECORD_FILE = "backbone.json"
KIND_TAG = "radimagenet.kind"
KINDS = ("backbone", "finetuned")  # a registered model's radimagenet.kind
KIND_DESCRIPTIONS = {"backbone": "RadImageNet-style pretrained backbone",
                     "finetuned": "a model fine-tuned from a RadImageNet-style backbone (or scratch, ImageNet)"}


class TrackingError(RadImageNetError):
    """MLflow is unreachable, refuses a request, or lacks a run/model we need."""


def tracking_uri(uri: str = "") -> str:
    """``uri`` or ``MLFLOW_TRACKING_URI``; a clear error when neither is set."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise TrackingError(
            'no MLflow tracking server: set MLFLOW_TRACKING_URI (for the local stack: eval "$(radimagenet stack env)")'
        )
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not MLflow's minutes of retries) when an HTTP tracking server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError(f"MLflow at {uri} answered /health with HTTP {resp.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(f"cannot reach MLflow at {uri} ({exc}); is the stack up? radimagenet stack status") from exc


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(c: Any, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return c.create_experiment(name)
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def find_run(uri: str, experiment: str, run_name: str) -> str | None:
    """The id of the run tagged ``radimagenet.run_name=<run_name>`` in ``experiment``, if any."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        order_by=["attributes.start_time ASC"],
        max_results=5,
    )
    return runs[0].info.run_id if runs else None


def start_or_resume_run(uri: str, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """``(run_id, resumed)``: the existing run of this name (marked RUNNING again) or a new one."""
    c = client(uri)
    run_id = find_run(uri, experiment, run_name)
    if run_id is not None:
        c.update_run(run_id, status="RUNNING")
        for key, value in (tags or {}).items():
            c.set_tag(run_id, key, value)
        return run_id, True
    run = c.create_run(
        _experiment_id(c, experiment), run_name=run_name, tags={RUN_NAME_TAG: run_name, **(tags or {})}
    )
    return run.info.run_id, False


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Log params; on a resumed run, keep the first values (MLflow params are immutable) and record
    changed ones as ``radimagenet.changed.<key>`` tags."""
    from mlflow.entities import Param, RunTag

    c = client(uri)
    existing = c.get_run(run_id).data.params
    new, changed = [], []
    for key, value in params.items():
        text = str(value)[:6000]
        if key not in existing:
            new.append(Param(key, text))
        elif existing[key] != text:
            changed.append(RunTag(f"radimagenet.changed.{key}", text[:5000]))
    for i in range(0, len(new), 100):
        c.log_batch(run_id, params=new[i : i + 100])
    if changed:
        c.log_batch(run_id, tags=changed)


def log_dataset(uri: str, run_id: str, manifest: dict[str, Any], manifest_uri: str, context: str = "train") -> None:
    """The dataset as an MLflow input (source = manifest URI, digest = dataset digest); once per run."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    digest = str(manifest.get("digest", ""))
    short = digest.split(":", 1)[-1][:32]  # MLflow stores at most 36 characters of digest
    c = client(uri)
    for existing in c.get_run(run_id).inputs.dataset_inputs:
        if existing.dataset.digest == short:
            return
    try:
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        source = resolve_dataset_source(manifest_uri)
    except Exception:  # noqa: BLE001 - fall back to a plain URL source
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        source = HTTPDatasetSource(manifest_uri)
    name = manifest_uri.rstrip("/").rsplit("/", 2)[-2] if "/" in manifest_uri else manifest_uri
    ds = MetaDataset(source=source, name=name, digest=short)
    c.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])])
    c.set_tag(run_id, "radimagenet.dataset_digest", digest)
    c.set_tag(run_id, "radimagenet.dataset_uri", manifest_uri)


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    client(uri).log_text(run_id, text, artifact_file)


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int, tags: dict[str, str] | None = None) -> None:
    """Log numeric metrics at ``step`` (NaN/inf are skipped: MLflow rejects them on some stores), and ``tags``."""
    import math
    import time

    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    items = [
        Metric(_metric_key(k), float(v), now, int(step))
        for k, v in metrics.items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    ]
    c = client(uri)
    for i in range(0, len(items), 1000):
        c.log_batch(run_id, metrics=items[i : i + 1000])
    if tags:
        c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def _metric_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", key)


def get_run(uri: str, run_id: str) -> Any:
    return client(uri).get_run(run_id)


# ---------------------------------------------------------------- registry


def register_backbone(
    uri: str,
    run_id: str,
    local_dir: str,
    name: str,
    alias: str = "candidate",
    tags: dict[str, str] | None = None,
    description: str = "",
    kind: str = "backbone",
) -> str:
    """Log ``local_dir`` as the run's ``backbone/step-<step>/`` artifacts and register it as a new
    version of ``name`` (a registered model of ``kind``: ``backbone`` or ``finetuned``, its tag
    ``radimagenet.kind``) with ``alias``. Idempotent: a version already registered from ``run_id`` at
    the same ``step`` tag is returned instead of a duplicate (a re-run of a finished job registers
    nothing new; a resumed job that trained further does). Returns the version number (string)."""
    c = client(uri)
    tags = {k: str(v) for k, v in (tags or {}).items()}
    try:
        rm = c.get_registered_model(name)
    except Exception:  # noqa: BLE001 - not there yet
        c.create_registered_model(name, tags={KIND_TAG: kind}, description=KIND_DESCRIPTIONS.get(kind, ""))
    else:
        if rm.tags.get(KIND_TAG, "backbone") != kind:
            raise TrackingError(f"registered model {name!r} holds {rm.tags.get(KIND_TAG, 'backbone')} models, not "
                                f"{kind} ones: choose another registry.name")
    existing = registered_version(uri, name, run_id, tags.get("step"))
    if existing is not None:
        c.set_registered_model_alias(name, alias, existing)
        return existing
    artifact_path = f"{BACKBONE_DIR}/step-{tags['step']}" if "step" in tags else BACKBONE_DIR
    c.log_artifacts(run_id, local_dir, artifact_path)
    source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = c.create_model_version(name, source=source, run_id=run_id, tags=tags, description=description)
    c.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def registered_version(uri: str, name: str, run_id: str, step: str | None) -> str | None:
    """The version of ``name`` registered from ``run_id`` with the ``step`` tag ``step``, if any."""
    try:
        versions = _search_versions(client(uri), f"name = '{name}'")
    except Exception:  # noqa: BLE001 - no such model yet
        return None
    return next((str(mv.version) for mv in versions if mv.run_id == run_id and mv.tags.get("step") == step), None)


def _search_versions(c: Any, filter_string: str) -> list[Any]:
    out, token = [], None
    while True:
        page = c.search_model_versions(filter_string, max_results=200, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def list_backbones(uri: str, name: str | None = None, kinds: tuple[str, ...] = KINDS) -> list[dict[str, Any]]:
    """Every registered version of the ``kinds`` of models (newest first per name) as plain dicts; ``kind``
    says backbone or finetuned, ``accuracy``/``auc`` are validation (backbones) or test (fine-tuned) figures."""
    c = client(uri)
    if name:
        models = [_registered_model(c, name)]
    else:
        models = [m for m in c.search_registered_models(max_results=1000) if m.tags.get(KIND_TAG) in kinds]
    rows = []
    for rm in sorted(models, key=lambda m: m.name):
        kind = rm.tags.get(KIND_TAG, "backbone")
        split = "test" if kind == "finetuned" else "val"
        aliases_of: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases_of.setdefault(str(version), []).append(alias)
        for mv in sorted(_search_versions(c, f"name = '{rm.name}'"), key=lambda v: -int(v.version)):
            t = mv.tags
            rows.append({"name": rm.name, "version": str(mv.version), "kind": kind,
                         "task": t.get("task", "classification"), "aliases": sorted(aliases_of.get(str(mv.version), [])), "arch": t.get("arch", ""),
                         "dataset_digest": t.get("dataset_digest", ""), "backbone": t.get("backbone", ""),
                         # versions registered before the metric names were unified carry the old tags
                         "accuracy": t.get(f"{split}/accuracy", t.get("val/top1", "")),
                         "auc": t.get(f"{split}/auc", t.get("val/auc_macro", "")), "dice": t.get("test/dice", ""),
                         "run_id": mv.run_id, "source": mv.source})
    return rows


def _registered_model(c: Any, name: str) -> Any:
    try:
        return c.get_registered_model(name)
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"no registered backbone named {name!r} ({_short(exc)})") from exc


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]


def set_alias(uri: str, name: str, version: str, alias: str) -> None:
    """Point ``alias`` of ``name`` at ``version`` (e.g. promote a candidate to champion)."""
    c = client(uri)
    rm = _registered_model(c, name)
    try:
        c.get_model_version(name, str(version))
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"{name} has no version {version} ({_short(exc)})") from exc
    c.set_registered_model_alias(rm.name, alias, str(version))


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@alias`` -> (NAME, None, alias); ``NAME/3`` -> (NAME, "3", None); ``NAME`` -> latest."""
    if ref.startswith("models:/"):
        ref = ref[len("models:/") :]
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if not name or not alias:
            raise ValueError(f"bad backbone reference {ref!r} (expected NAME@alias, NAME/VERSION or NAME)")
        return name, None, alias
    name, sep, version = ref.rpartition("/")
    if sep and version.isdigit() and name:
        return name, version, None
    if not ref or "/" in ref:
        raise ValueError(f"bad backbone reference {ref!r} (expected NAME@alias, NAME/VERSION or NAME)")
    return ref, None, None


def resolve_backbone(uri: str, ref: str) -> Any:
    """The ModelVersion for ``NAME@alias``, ``NAME/VERSION`` or ``NAME`` (latest version)."""
    name, version, alias = parse_ref(ref)
    c = client(uri)
    rm = _registered_model(c, name)
    if alias is not None:
        if alias not in (rm.aliases or {}):
            raise TrackingError(f"backbone {name!r} has no alias {alias!r} (aliases: {sorted(rm.aliases or {})})")
        return c.get_model_version_by_alias(name, alias)
    if version is not None:
        try:
            return c.get_model_version(name, version)
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(f"backbone {name!r} has no version {version} ({_short(exc)})") from exc
    versions = _search_versions(c, f"name = '{name}'")
    if not versions:
        raise TrackingError(f"backbone {name!r} has no versions")
    return max(versions, key=lambda v: int(v.version))


def download_backbone(uri: str, model_version: Any, dst: str | None = None) -> str:
    """Download a model version's ``backbone/`` artifacts into ``dst`` (default: a new temporary folder,
    the caller's to delete); returns the local directory."""
    import mlflow.artifacts

    dst = dst or tempfile.mkdtemp(prefix="radimagenet-backbone-")
    try:
        return mlflow.artifacts.download_artifacts(
            artifact_uri=model_version.source, dst_path=dst, tracking_uri=uri
        )
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(
            f"cannot download {model_version.name}/{model_version.version} from {model_version.source}: {_short(exc)}"
        ) from exc


def log_artifacts(uri: str, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
    """Upload the files under ``local_dir`` as the run's artifacts (under ``artifact_path``)."""
    client(uri).log_artifacts(run_id, local_dir, artifact_path)


def download_run_artifacts(uri: str, run_id: str, artifact_path: str, dst: str) -> str:
    """Download the run's ``artifact_path`` (a file or folder) into ``dst``; returns the local path."""
    try:
        return client(uri).download_artifacts(run_id, artifact_path, dst)
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"run {run_id} has no artifact {artifact_path!r} ({_short(exc)})") from exc


def list_run_artifacts(uri: str, run_id: str, path: str = "") -> list[str]:
    """The paths of the run's artifact files directly under ``path``."""
    return [a.path for a in client(uri).list_artifacts(run_id, path) if not a.is_dir]


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every logged value of ``key``, in step order."""
    return sorted((int(m.step), float(m.value)) for m in client(uri).get_metric_history(run_id, key))


def version_text(uri: str, model_version: Any, names: tuple[str, ...]) -> str | None:
    """The text of the first of ``names`` (paths inside the version's folder) that exists, else None."""
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="radimagenet-version-") as tmp:
        for name in names:
            try:
                local = mlflow.artifacts.download_artifacts(artifact_uri=f"{model_version.source.rstrip('/')}/{name}",
                                                            dst_path=tmp, tracking_uri=uri)
            except Exception:  # noqa: BLE001 - not in this layout; try the next
                continue
            with open(local) as f:
                return f.read()
    return None


def download_text(uri: str, run_id: str, artifact_path: str) -> str:
    """The text of one run artifact (e.g. ``predictions/test.csv``)."""
    tmp = tempfile.mkdtemp(prefix="radimagenet-artifact-")
    try:
        local = client(uri).download_artifacts(run_id, artifact_path, tmp)
        with open(local) as f:
            return f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
