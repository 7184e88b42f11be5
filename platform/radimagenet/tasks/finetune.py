"""Downstream fine-tuning: classification or segmentation from a registered backbone, scratch or ImageNet.

    cfg = load_config(FinetuneConfig, "pipelines/demo-finetune.yaml", ["backbone=radimagenet-demo@candidate"])
    result = finetune(cfg)                       # Ray Train (scaling.num_workers) or in_process=True
    result.metrics["test/auc"], result.run_id

The driver checks everything it can before a run exists (config, S3, dataset against task, masks,
architecture, MLflow, the backbone reference pinned to NAME/VERSION, ImageNet weights), then runs the
task (:class:`~radimagenet.tasks.classify.ClassifyTask` or :class:`~radimagenet.tasks.segment.SegmentTask`)
through the training engine on every worker. Each epoch trains, evaluates the validation split and
checkpoints (current + best weights), so a failed worker resumes; after the last epoch the best
weights are tested and rank 0 logs the report, figures and per-sample predictions
(``predictions/test.csv``) to the run. Then the driver registers the model (``registry.name``, default
``radimagenet-ft-<dataset>-<task>``, alias ``registry.alias``) with its lineage and model card.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from radimagenet.io import tracking
from radimagenet.tasks.downstream import REPORT_FILE
from radimagenet.tasks.finetune_config import FinetuneConfig, check_masks, check_task, init_name, resolve
from radimagenet.tasks.leakage import DATASET_TAG, check_overlap, pretraining_dataset
from radimagenet.train.config import RunResult


def build_task(cfg: FinetuneConfig, manifest: dict) -> Any:
    """The task object the engine runs: classification or segmentation, checked against the dataset."""
    from radimagenet.tasks.classify import ClassifyTask
    from radimagenet.tasks.segment import SegmentTask

    spec = check_task(cfg, manifest)
    return (SegmentTask if spec.task == "segmentation" else ClassifyTask)(cfg, manifest, spec)


def train_worker(config: dict[str, Any], ctx: Any) -> dict[str, float]:
    """Fine-tune on one worker (rank ``ctx.rank``); returns the test metrics."""
    from radimagenet.train.engine import fit_config

    return fit_config(config, ctx, FinetuneConfig, build_task)


def knn_worker(config: dict[str, Any], ctx: Any) -> dict[str, float]:
    """``protocol=knn`` on one worker: no training, the k-NN test report (:mod:`radimagenet.tasks.knn`)."""
    from radimagenet.config import from_dict
    from radimagenet.dataset.format import load_manifest
    from radimagenet.tasks.knn import knn_evaluate

    cfg = from_dict(FinetuneConfig, config)
    return knn_evaluate(build_task(cfg, load_manifest(cfg.data.manifest)), ctx)


# ------------------------------------------------------------------------------------ the driver


@dataclass
class FinetuneResult(RunResult):
    backbone: str = ""  # NAME/VERSION, or scratch / imagenet
    registry_name: str = ""
    version: str | None = None  # the registered version (None: registry.register or eval.log_model off)


def preflight(cfg: FinetuneConfig) -> tuple[FinetuneConfig, dict, str, dict[str, str]]:
    """Everything checkable before a run exists; returns ``(resolved cfg, manifest, tracking uri, tags)``."""
    from radimagenet.train.launch import prepare_data

    cfg, manifest = prepare_data(cfg, resolve)
    spec = check_task(cfg, manifest)
    if spec.task == "segmentation":
        check_masks(manifest)
    uri = tracking.tracking_uri(cfg.tracking.uri)
    tracking.check_reachable(uri)
    cfg, tags = _resolve_init(cfg, uri)
    if spec.task == "segmentation" and tags["radimagenet.arch"]:
        from radimagenet.models.unet import create_unet

        create_unet(tags["radimagenet.arch"])
    tags |= check_overlap(cfg, manifest, tags)  # last: it reads the test split (and the pretraining data)
    return cfg, manifest, uri, tags | {"radimagenet.task": spec.task, "radimagenet.metrics": spec.mode}


def _resolve_init(cfg: FinetuneConfig, uri: str) -> tuple[FinetuneConfig, dict[str, str]]:
    """Pin a registry reference to NAME/VERSION; check scratch/imagenet architectures and weights."""
    from radimagenet.models.factory import check_arch, imagenet_weights_file

    tags = {"radimagenet.kind": "finetune", "radimagenet.init": cfg.init, "radimagenet.initialisation": init_name(cfg),
            "radimagenet.protocol": cfg.protocol}
    if cfg.init == "backbone":
        mv = tracking.resolve_backbone(uri, cfg.backbone)
        pinned = f"{mv.name}/{mv.version}"
        tags |= {"radimagenet.backbone_ref": cfg.backbone, "radimagenet.backbone": pinned,
                 "radimagenet.backbone_name": mv.name, "radimagenet.backbone_version": str(mv.version),
                 "radimagenet.backbone_dataset_digest": mv.tags.get("dataset_digest", ""),
                 DATASET_TAG: pretraining_dataset(uri, mv),
                 "radimagenet.arch": mv.tags.get("arch", "")}
        return dataclasses.replace(cfg, resolved_backbone=pinned), tags
    check_arch(cfg.model.arch)
    tags |= {"radimagenet.backbone": cfg.init, "radimagenet.arch": cfg.model.arch}
    if cfg.init == "imagenet":  # checked here: the driver's copy (an s3:// file stays where it is)
        path = imagenet_weights_file(cfg.model.arch, cfg.model.weights_file)
        if not cfg.model.weights_file.startswith("s3://"):
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights_file=path))
    return cfg, tags


def share_weights(cfg: FinetuneConfig) -> FinetuneConfig:
    """For Ray workers on other nodes: a local ImageNet weights file (``init=imagenet``) is copied next to
    the run's checkpoints on S3 (once) and ``model.weights_file`` names that copy; each node fetches it.
    Nothing changes for other inits, an ``s3://`` file, or a local ``checkpoint.storage_path`` (one node)."""
    from radimagenet.io import storage, upload

    path, root = cfg.model.weights_file, cfg.checkpoint.storage_path.rstrip("/")
    if cfg.init != "imagenet" or not path or path.startswith("s3://") or not root.startswith("s3://"):
        return cfg
    uri = f"{root}/{cfg.tracking.run_name}/imagenet-weights/{path.rsplit('/', 1)[-1]}"
    if not storage.exists(uri):
        with open(path, "rb") as f, upload.S3Writer(uri) as out:
            while chunk := f.read(upload.PART_SIZE):
                out.write(chunk)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights_file=uri))


def finetune(cfg: FinetuneConfig, *, in_process: bool = False) -> FinetuneResult:
    """Fine-tune (or resume) ``cfg`` in one MLflow run: preflight, params, dataset, train, test report."""
    from radimagenet.tasks.register import register_finetuned
    from radimagenet.train.launch import launch, tracked_run

    cfg, manifest, uri, tags = preflight(cfg)
    if not in_process:
        cfg = share_weights(cfg)
    version = None
    with tracked_run(cfg, uri, manifest, tags, "finetune") as run:
        worker = knn_worker if run.cfg.protocol == "knn" else train_worker
        out = launch(worker, run.cfg, run.config, in_process=in_process, what="fine-tuning")
        # on Ray, the test report is rank 0's artifact (Ray's result holds the last report's metrics)
        metrics = out if in_process else json.loads(tracking.download_text(uri, run.run_id, REPORT_FILE))
        if run.cfg.registry.register:  # once, here in the driver, after the run finished
            version = register_finetuned(run.cfg, uri, run.run_id, manifest, tags, metrics)
    return FinetuneResult(run.run_id, run.cfg.tracking.run_name, run.resumed, metrics, run.config,
                          tags["radimagenet.backbone"], run.cfg.registry.name, version)


def summary_line(metrics: dict[str, float]) -> str:
    """One line of the headline test metrics (AUC with its CI, operating point; or Dice)."""
    m = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    nan = math.nan
    if "test/dice" in m:
        return (f"test Dice {m['test/dice']:.4f} (lesion images {m.get('test/dice_lesion', nan):.4f}), "
                f"best epoch {int(m.get('best_epoch', 0))}")
    line = (f"test AUC {m.get('test/auc', nan):.4f} (95% CI {m.get('test/auc_ci_low', nan):.4f}-"
            f"{m.get('test/auc_ci_high', nan):.4f}), accuracy {m.get('test/accuracy', nan):.4f}, "
            f"sensitivity {m.get('test/sensitivity', nan):.4f}, specificity {m.get('test/specificity', nan):.4f}")
    if "test/gradcam_energy_on_lesion" in m:
        line += (f"; Grad-CAM energy on lesion {m['test/gradcam_energy_on_lesion']:.3f} (chance "
                 f"{m['test/gradcam_lesion_area_fraction']:.3f}), pointing game {m['test/gradcam_pointing_game']:.3f}")
    return line + f"; best epoch {int(m.get('best_epoch', 0))}"
