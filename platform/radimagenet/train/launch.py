"""The driver side of every training task: checks, one MLflow run, the engine in-process or on Ray Train.

    with tracked_run(cfg, uri, manifest, tags, "pretrain") as run:      # find or create the run
        result = launch(worker_fn, run.cfg, run.config, in_process=False)  # Ray TorchTrainer

Order of work (each step fails with one clear line before anything is written):
1. :func:`prepare_data`: config resolved, S3 buckets reachable, the manifest loaded, shards checked;
2. :func:`tracked_run`: the MLflow run of ``tracking.run_name`` is found (tag ``radimagenet.run_name``)
   or created; params, dataset input (and :func:`dataset_tags`: the split unit, a warning for a dataset
   split image by image) and the resolved config (YAML artifact) are logged here; when the work is
   done, :func:`log_curves` draws the loss and accuracy curves (``plots/*_curves.png``); the run ends
   FINISHED, FAILED or KILLED with the work;
3. :func:`launch`: ``worker_fn(config, ctx)`` on ``scaling.num_workers`` Ray Train workers
   (``TorchTrainer`` with ``RunConfig(storage_path, name=run_name)``: a re-run finds the run's
   checkpoints and resumes; failed workers restart from the latest checkpoint; workers placed by
   ``scaling.placement_strategy``; on a cluster of several nodes checkpoints must go to S3:
   :func:`check_shared_storage`), or in this process;
   the process of rank 0 logs MLflow system metrics (``system/cpu_utilization_percentage``, memory,
   GPU when present; every ``tracking.system_metrics_interval`` seconds) while it trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from radimagenet.config import flatten, to_dict
from radimagenet.dataset.format import load_manifest, split_unit
from radimagenet.dataset.inspect import split_unit_warnings
from radimagenet.errors import ConfigError, RadImageNetError
from radimagenet.io import storage, tracking

WorkerFn = Callable[[dict[str, Any]], Any]
# the curves drawn at the end of every training run: (file, y label, metrics)
CURVES = (("plots/loss_curves.png", "loss", ("train/loss", "train/epoch_loss", "val/loss")),
          ("plots/accuracy_curves.png", "validation", ("val/accuracy", "val/auc", "val/top5", "val/dice")))


class TrainingError(RadImageNetError):
    """Training failed (after Ray Train's retries)."""


def check_shards(manifest: dict, cfg: Any) -> None:
    """Train and val must have shards, and the train split a batch per worker (shards are read by sample:
    any number of them serves any number of ranks and loader workers)."""
    splits = manifest.get("splits", {})
    for split in ("train", "val"):
        if not splits.get(split, {}).get("shards"):
            raise ConfigError(
                f"dataset {cfg.data.manifest} has no {split!r} shards (splits: {sorted(splits)}): it was "
                f"ingested with no {split} share, or a small cohort drew no patient for it; re-ingest with a "
                f"'split' column in the labels file, or with more patients")
    samples = splits["train"].get("samples") or sum(s["samples"] for s in splits["train"]["shards"])
    if samples // cfg.scaling.num_workers < cfg.train.batch_size:
        raise ConfigError(
            f"train split has {samples} samples: fewer than train.batch_size={cfg.train.batch_size} per "
            f"worker x {cfg.scaling.num_workers} workers; lower train.batch_size"
        )


def prepare_data(cfg: Any, resolve_fn: Callable[..., Any]) -> tuple[Any, dict]:
    """The checks every training task shares: resolve the config, reach the buckets, load the manifest,
    resolve again with it (image size, classes), check the shards. Returns ``(cfg, manifest)``."""
    cfg = resolve_fn(cfg)
    storage.check_bucket(cfg.data.manifest)
    if cfg.checkpoint.storage_path.startswith("s3://"):
        storage.check_bucket(cfg.checkpoint.storage_path)
    manifest = load_manifest(cfg.data.manifest)
    cfg = resolve_fn(cfg, manifest)
    check_shards(manifest, cfg)
    return cfg, manifest


@dataclass
class Run:
    """The MLflow run a training job writes to: the config with ``tracking.uri``/``run_id`` filled in,
    that config as a plain dict (what workers and checkpoints get), and whether the run existed."""

    cfg: Any
    config: dict[str, Any]
    run_id: str
    resumed: bool


def dataset_tags(manifest: dict) -> dict[str, str]:
    """Tags every run gets from its dataset: ``radimagenet.split_unit`` and, for a dataset split image by
    image, the warning ``radimagenet.warning.split_unit`` (also printed)."""
    tags = {"radimagenet.split_unit": split_unit(manifest)}
    for warning in split_unit_warnings(manifest):
        tags["radimagenet.warning.split_unit"] = warning
        print(f"[radimagenet] warning: {warning}", file=sys.stderr, flush=True)
    return tags


@contextlib.contextmanager
def tracked_run(cfg: Any, uri: str, manifest: dict, tags: dict[str, str], kind: str) -> Iterator[Run]:
    """Find or create the run of ``tracking.run_name``, log params, dataset and config, and end it with
    the status of the work done inside the ``with`` block."""
    tags = dict(tags) | dataset_tags(manifest)
    if cfg.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
    run_id, resumed = tracking.start_or_resume_run(uri, cfg.tracking.experiment, cfg.tracking.run_name, tags=tags)
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, uri=uri, run_id=run_id))
    config = to_dict(cfg)
    try:
        import yaml

        tracking.log_params(uri, run_id, flatten(config))
        tracking.log_dataset(uri, run_id, manifest, cfg.data.manifest)
        tracking.log_text(uri, run_id, yaml.safe_dump(config, sort_keys=False), f"config/{kind}.yaml")
        yield Run(cfg, config, run_id, resumed)
        log_curves(uri, run_id)
    except KeyboardInterrupt:
        tracking.end_run(uri, run_id, "KILLED")
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # MLflow may be the thing that failed
            tracking.end_run(uri, run_id, "FAILED")
        raise
    tracking.end_run(uri, run_id, "FINISHED")


def log_curves(uri: str, run_id: str) -> None:
    """The run's loss and validation curves (:data:`CURVES`) from its metric history, as PNG artifacts;
    a failure costs the figures (a warning), never the run."""
    import tempfile
    import warnings

    from radimagenet.eval.figures import curves_png

    try:
        with tempfile.TemporaryDirectory(prefix="radimagenet-curves-") as tmp:
            for path, ylabel, keys in CURVES:
                series = {k: tracking.metric_history(uri, run_id, k) for k in keys}
                if any(series.values()):
                    curves_png({k: v for k, v in series.items() if v}, f"{tmp}/{path}", ylabel=ylabel,
                               title=f"{ylabel} by optimizer step")
            tracking.log_artifacts(uri, run_id, tmp)
    except Exception as exc:  # noqa: BLE001 - figures are a report, not the result
        warnings.warn(f"training curves of run {run_id} not logged: {exc}", stacklevel=2)


def monitored(config: dict[str, Any]) -> contextlib.AbstractContextManager:
    """MLflow system metrics of this process for the config's run (nothing without a run id)."""
    from radimagenet.io.monitor import system_metrics

    t = config.get("tracking") or {}
    if not t.get("run_id"):
        return contextlib.nullcontext()
    return system_metrics(tracking.tracking_uri(t.get("uri", "")), t["run_id"],
                          float(t.get("system_metrics_interval", 10.0)))


def launch(worker_fn: Callable[[dict[str, Any], Any], Any], cfg: Any, config: dict[str, Any], *,
           in_process: bool = False, what: str = "training") -> Any:
    """Run ``worker_fn(config, ctx)``: in this process (returns what it returns) or on
    ``scaling.num_workers`` Ray Train workers (returns Ray's result)."""
    if in_process:
        from radimagenet.train.context import local_context

        with monitored(config):
            return worker_fn(config, local_context(cfg))
    return fit_with_ray(_RayWorker(worker_fn), cfg, config, what)


@dataclass(frozen=True)
class _RayWorker:
    """``worker_fn`` with the Ray Train worker's context (picklable: the function travels by reference)."""

    worker_fn: Callable[[dict[str, Any], Any], Any]

    def __call__(self, config: dict[str, Any]) -> None:
        from radimagenet.train.context import ray_context

        ctx = ray_context()
        with monitored(config) if ctx.is_main else contextlib.nullcontext():
            self.worker_fn(config, ctx)


def fit_with_ray(train_fn: WorkerFn, cfg: Any, config: dict, what: str = "training") -> Any:
    """Run ``train_fn(config)`` on ``cfg.scaling.num_workers`` Ray Train workers (DDP, restarts from
    the last checkpoint on failure) and return Ray's result."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from radimagenet.io.cluster import connect, worker_env

    fs, path = storage.arrow_filesystem(cfg.checkpoint.storage_path)
    with connect():
        check_shared_storage(cfg.checkpoint.storage_path)
        trainer = TorchTrainer(
            train_fn,
            train_loop_config=config,
            torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                         resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
                                         placement_strategy=cfg.scaling.placement_strategy),
            run_config=RunConfig(
                name=cfg.tracking.run_name, storage_path=path, storage_filesystem=fs,
                failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
                worker_runtime_env={"env_vars": worker_env()},
            ),
        )
        try:
            result = trainer.fit()
        except Exception as exc:  # noqa: BLE001 - one clear line; the cause stays chained
            raise TrainingError(f"{what} run {cfg.tracking.run_name!r} failed: {_root_cause(exc)}") from exc
    if result.error is not None:
        raise TrainingError(f"{what} run {cfg.tracking.run_name!r} failed: {_root_cause(result.error)}")
    return result


def check_shared_storage(storage_path: str) -> None:
    """Refuse a local ``checkpoint.storage_path`` on a Ray cluster of more than one node (call it
    connected): each worker would write its checkpoints to its own node's disk, where neither a restarted
    worker nor the driver (which registers the last one) finds them."""
    if storage_path.startswith("s3://"):
        return
    import ray

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if nodes > 1:
        raise ConfigError(
            f"checkpoint.storage_path={storage_path} is a local folder but the Ray cluster has {nodes} nodes: "
            f"checkpoints would stay on the node that wrote them; use an s3:// path (e.g. s3://BUCKET/checkpoints)")


def _root_cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    last = [line for line in text if line.strip()]
    return last[-1][:500] if last else type(exc).__name__
