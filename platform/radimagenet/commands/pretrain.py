"""``radimagenet pretrain [--config FILE] [key=value ...]``: pretrain a backbone with Ray Train."""

from __future__ import annotations

import argparse

from radimagenet.commands._training import add_config_arguments, load_or_print


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from radimagenet.tasks.pretrain import PretrainConfig

    add_config_arguments(parser, PretrainConfig, "pipelines/pretrain-resnet50.yaml",
                         "train.epochs=2 scaling.num_workers=2 tracking.run_name=r1")


def run(args: argparse.Namespace) -> int:
    from radimagenet.tasks.pretrain import PretrainConfig, pretrain, validate

    cfg = load_or_print(PretrainConfig, validate, args)
    if cfg is None:
        return 0
    result = pretrain(cfg, in_process=args.in_process)
    m = result.metrics
    print(f"run {result.run_name} ({'resumed' if result.resumed else 'new'}), MLflow run {result.run_id}")
    print(f"val accuracy {m.get('val/accuracy', float('nan')):.4f}  top-5 {m.get('val/top5', float('nan')):.4f}  "
          f"AUC {m.get('val/auc', float('nan')):.4f}")
    if result.version:
        print(f"registered {result.registry_name} version {result.version} @{cfg.registry.alias}")
    return 0
