"""The driver: checks, one MLflow run, Ray Train (or in-process) training, registration.

    result = pretrain(load_config(PretrainConfig, "pipelines/demo-pretrain.yaml", ["train.epochs=2"]))

Order of work (each step fails with one clear line before anything is written):
1. config + manifest + shard count + architecture checked; S3 buckets and MLflow reachable;
2. the MLflow run of ``tracking.run_name`` is found (tag ``radimagenet.run_name``) or created; params,
   dataset input and the resolved config (YAML artifact) are logged by this driver;
3. ``TorchTrainer`` with ``RunConfig(storage_path, name=run_name)``: Ray Train V2 finds the run's
   checkpoint snapshot in storage on a re-run (resume) and restarts failed workers from the latest
   checkpoint (``FailureConfig(max_failures)``); workers log metrics to the run from rank 0;
4. the final checkpoint becomes a registered backbone version (alias ``registry.alias``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import yaml

from radimagenet.config import flatten, to_dict
from radimagenet.errors import ConfigError, RadImageNetError
from radimagenet.io import storage, tracking
from radimagenet.train.config import PretrainConfig, resolve

FORWARDED_ENV_PREFIXES = ("AWS_", "MLFLOW_", "RADIMAGENET_")


class TrainingError(RadImageNetError):
    """Training failed (after Ray Train's retries)."""


@dataclass
class PretrainResult:
    run_id: str
    run_name: str
    resumed: bool
    metrics: dict[str, float]
    registry_name: str
    version: str | None
    config: dict[str, Any]


def storage_filesystem(path: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path within it)`` for a local directory or ``s3://bucket/prefix``.

    For S3 the filesystem is built from the same variables as boto3 (``AWS_ENDPOINT_URL`` for
    SeaweedFS/MinIO, keys, region), so Ray's checkpoint uploads go where our data lives.
    """
    import pyarrow.fs as pafs

    if not path.startswith("s3://"):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    kwargs: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(access_key=os.environ["AWS_ACCESS_KEY_ID"],
                      secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "http")
    kwargs.update(connect_timeout=5, request_timeout=60)
    return pafs.S3FileSystem(**kwargs), path[len("s3://"):].rstrip("/")


def check_shards(manifest: dict, cfg: PretrainConfig) -> None:
    """Every loader process of every rank needs at least one train shard; val must exist."""
    splits = manifest.get("splits", {})
    for split in ("train", "val"):
        if not splits.get(split, {}).get("shards"):
            raise ConfigError(
                f"dataset {cfg.data.manifest} has no {split!r} shards (splits: {sorted(splits)}): it was "
                f"ingested with no {split} share, or a small cohort drew no patient for it; re-ingest with a "
                f"'split' column in the labels file, or with more patients")
    shards = len(splits["train"]["shards"])
    readers = cfg.scaling.num_workers * max(1, cfg.data.num_workers)
    if shards < readers:
        raise ConfigError(
            f"dataset has {shards} train shard(s) but scaling.num_workers={cfg.scaling.num_workers} x "
            f"data.num_workers={cfg.data.num_workers} = {readers} readers need at least one each: "
            f"lower data.num_workers / scaling.num_workers or re-ingest with smaller shards"
        )
    samples = splits["train"].get("samples") or sum(s["samples"] for s in splits["train"]["shards"])
    if samples // cfg.scaling.num_workers < cfg.train.batch_size:
        raise ConfigError(
            f"train split has {samples} samples: fewer than train.batch_size={cfg.train.batch_size} per "
            f"worker x {cfg.scaling.num_workers} workers; lower train.batch_size"
        )


def prepare_data(cfg: Any, resolve_fn: Any) -> tuple[Any, dict]:
    """The checks pretraining and fine-tuning share: resolve the config, reach the buckets, load the
    manifest, resolve again with it (image size, classes), check the shards. Returns (cfg, manifest)."""
    from radimagenet.data import loader as data

    cfg = resolve_fn(cfg)
    storage.check_bucket(cfg.data.manifest)
    if cfg.checkpoint.storage_path.startswith("s3://"):
        storage.check_bucket(cfg.checkpoint.storage_path)
    manifest = data.load_manifest(cfg.data.manifest)
    cfg = resolve_fn(cfg, manifest)
    check_shards(manifest, cfg)
    return cfg, manifest


def preflight(cfg: PretrainConfig) -> tuple[PretrainConfig, dict, str]:
    """Check everything that can be checked before training; returns (resolved cfg, manifest, uri)."""
    from radimagenet.models.factory import check_arch

    cfg, manifest = prepare_data(cfg, resolve)
    check_arch(cfg.model.arch)
    uri = tracking.tracking_uri(cfg.tracking.uri)
    tracking.check_reachable(uri)
    return cfg, manifest, uri


def pretrain(cfg: PretrainConfig, *, in_process: bool = False) -> PretrainResult:
    """Train (or resume) ``cfg``, log it to MLflow and register the backbone; see the module doc."""
    cfg, manifest, uri = preflight(cfg)
    run_id, resumed = tracking.start_or_resume_run(
        uri, cfg.tracking.experiment, cfg.tracking.run_name,
        tags={"radimagenet.kind": "pretrain", "radimagenet.arch": cfg.model.arch},
    )
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, uri=uri, run_id=run_id))
    config = to_dict(cfg)
    try:
        tracking.log_params(uri, run_id, flatten(config))
        tracking.log_dataset(uri, run_id, manifest, cfg.data.manifest)
        tracking.log_text(uri, run_id, yaml.safe_dump(config, sort_keys=False), "config/pretrain.yaml")
        metrics, ckpt = _train_in_process(cfg, config) if in_process else _train_with_ray(cfg, config)
        version = None
        if cfg.registry.register:  # the checkpoint's metrics also cover a re-run that had nothing left to train
            version, metrics = register(cfg, uri, run_id, ckpt, metrics)
    except KeyboardInterrupt:
        tracking.end_run(uri, run_id, "KILLED")
        raise
    except BaseException:
        _safe_end(uri, run_id, "FAILED")
        raise
    tracking.end_run(uri, run_id, "FINISHED")
    return PretrainResult(run_id, cfg.tracking.run_name, resumed, metrics, cfg.registry.name, version, config)


def _safe_end(uri: str, run_id: str, status: str) -> None:
    try:
        tracking.end_run(uri, run_id, status)
    except Exception:  # noqa: BLE001 - MLflow may be the thing that failed
        pass


def _train_in_process(cfg: PretrainConfig, config: dict) -> tuple[dict, Any]:
    from radimagenet.train.engine import _fs_checkpoints, local_context, train_loop

    ctx = local_context(cfg)
    metrics = train_loop(config, ctx)
    fs, root = storage_filesystem(cfg.checkpoint.storage_path)
    found = _fs_checkpoints(fs, f"{root}/{cfg.tracking.run_name}")
    return metrics, (fs, found[-1]) if found else None


def _worker_env() -> dict[str, str]:
    """Settings the training workers get from the driver. Credentials are left out: Ray shows a
    runtime env to anyone holding the cluster token, and workers inherit them from their node's
    environment anyway; only a job submitted with ``--ship-credentials`` passes them on."""
    from radimagenet.ops.jobs import CREDENTIAL_ENV, SHIP_FLAG

    ship = os.environ.get(SHIP_FLAG) == "1"
    return {k: v for k, v in os.environ.items()
            if k.startswith(FORWARDED_ENV_PREFIXES) and (ship or k not in CREDENTIAL_ENV)}


def ray_address() -> str | None:
    """The GCS address for ``ray.init``: ``RAY_ADDRESS`` when it is one; when it is the HTTP (Jobs API)
    address of the local stack, the head's port from ``$RADIMAGENET_HOME/state.json``; None (start a
    local Ray) when unset. Inside a Ray job, Ray sets ``RAY_ADDRESS`` to the GCS address itself."""
    address = os.environ.get("RAY_ADDRESS", "")
    if not address.startswith(("http://", "https://")):
        return address or None
    state = os.path.join(os.environ.get("RADIMAGENET_HOME", ".radimagenet"), "state.json")
    try:
        with open(state) as f:
            port = json.load(f)["ports"]["ray"]
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(
            f"RAY_ADDRESS={address} is a Jobs API address, not a Ray cluster (GCS) address: submit with "
            f"`radimagenet submit -- radimagenet pretrain ...`, or set RAY_ADDRESS=HOST:PORT of the head"
        ) from exc
    return f"{urlparse(address).hostname}:{port}"


def fit_with_ray(train_fn: Any, cfg: Any, config: dict, what: str = "training") -> Any:
    """Run ``train_fn(config)`` on ``cfg.scaling.num_workers`` Ray Train workers (DDP, restarts from
    the last checkpoint on failure) and return Ray's result. ``cfg`` is a pretraining or fine-tuning
    config: both have ``scaling``, ``checkpoint`` and ``tracking.run_name``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    connect = not ray.is_initialized()  # a connection we make, we close (the cluster may go away later)
    if connect:
        address = ray_address()  # also given to Ray's own helper actors: several clusters may share a host
        ray.init(address=address, log_to_driver=True,
                 runtime_env={"env_vars": {"RAY_ADDRESS": address}} if address else None)
    fs, path = storage_filesystem(cfg.checkpoint.storage_path)
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.tracking.run_name, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
            worker_runtime_env={"env_vars": _worker_env()},
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - one clear line; the cause stays chained
        raise TrainingError(f"{what} run {cfg.tracking.run_name!r} failed: {_root_cause(exc)}") from exc
    finally:
        if connect:
            ray.shutdown()
    if result.error is not None:
        raise TrainingError(f"{what} run {cfg.tracking.run_name!r} failed: {_root_cause(result.error)}")
    return result


def _train_with_ray(cfg: PretrainConfig, config: dict) -> tuple[dict, Any]:
    from radimagenet.train.engine import ray_train_fn

    result = fit_with_ray(ray_train_fn, cfg, config)
    ckpt = result.checkpoint
    return dict(result.metrics or {}), (ckpt.filesystem, ckpt.path) if ckpt is not None else None


def _root_cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    last = [line for line in text if line.strip()]
    return last[-1][:500] if last else type(exc).__name__


def register(cfg: PretrainConfig, uri: str, run_id: str, ckpt: Any, metrics: dict) -> tuple[str, dict]:
    """Turn the final checkpoint into a registered backbone version (weights + record);
    returns ``(version, the checkpoint's metrics)``."""
    import pyarrow.fs as pafs

    from radimagenet.models.factory import BackboneRecord
    from radimagenet.train import checkpoint

    if ckpt is None:
        raise TrainingError(f"run {cfg.tracking.run_name!r} produced no checkpoint to register")
    fs, path = ckpt
    tmp = tempfile.mkdtemp(prefix="radimagenet-register-")
    try:
        local = os.path.join(tmp, "ckpt")
        os.makedirs(local)
        pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        state = checkpoint.read_state(local)
        final = {k: float(v) for k, v in (state.get("metrics") or metrics).items()
                 if isinstance(v, int | float)}
        record = BackboneRecord.from_dict(state["record"])
        record.metrics = final
        record.source = {"run_id": run_id, "run_name": cfg.tracking.run_name, "registry_name": cfg.registry.name,
                         "epochs": state["epoch"] + 1, "checkpoint": f"{path}"}
        out = os.path.join(tmp, "backbone")
        os.makedirs(out)
        shutil.copy(os.path.join(local, checkpoint.MODEL_FILE), os.path.join(out, checkpoint.MODEL_FILE))
        with open(os.path.join(out, tracking.RECORD_FILE), "w") as f:
            f.write(record.to_json())
        with open(os.path.join(out, "config.yaml"), "w") as f:
            yaml.safe_dump(state["config"], f, sort_keys=False)
        tags = {
            "arch": record.arch, "in_chans": str(record.in_chans),
            "input_size": "x".join(map(str, record.input_size)),
            "mean": json.dumps(list(record.mean)), "std": json.dumps(list(record.std)),
            "interpolation": record.interpolation, "num_classes": str(record.num_classes),
            "dataset_digest": record.dataset_digest, "run_name": cfg.tracking.run_name,
            "epochs": str(state["epoch"] + 1), "step": str(state["step"]),
            **{k: f"{v:.4f}" for k, v in final.items() if k.startswith("val/")},
        }
        description = (
            f"{record.arch} pretrained on dataset {record.dataset_digest} ({record.num_classes} classes), "
            f"input {record.in_chans}x{record.input_size[1]}x{record.input_size[2]}, grey replicated, "
            f"mean {list(record.mean)} std {list(record.std)} on [0,1] pixels; "
            f"val top-1 {final.get('val/top1', float('nan')):.4f}, AUC {final.get('val/auc_macro', float('nan')):.4f}. "
            f"Load with radimagenet.models.registry.load('{cfg.registry.name}/<version>')."
        )
        version = tracking.register_backbone(uri, run_id, out, cfg.registry.name, cfg.registry.alias, tags,
                                             description)
        return version, final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

