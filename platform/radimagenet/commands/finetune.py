"""``radimagenet finetune [--config FILE] [key=value ...]``: fine-tune a backbone downstream."""

from __future__ import annotations

import argparse

from radimagenet.commands._training import add_config_arguments, load_or_print


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from radimagenet.tasks.finetune_config import FinetuneConfig

    add_config_arguments(parser, FinetuneConfig, "pipelines/finetune-classification.yaml",
                         "backbone=radimagenet-resnet50@champion data.manifest=s3://radimagenet/datasets/thyroid "
                         "train.freeze=top10 train.lr=1e-3; init=scratch|imagenet model.arch=resnet50 instead of "
                         "a backbone; task=segmentation for a U-Net")


def run(args: argparse.Namespace) -> int:
    from radimagenet.tasks.finetune import finetune, summary_line
    from radimagenet.tasks.finetune_config import FinetuneConfig, validate

    cfg = load_or_print(FinetuneConfig, validate, args)
    if cfg is None:
        return 0
    result = finetune(cfg, in_process=args.in_process)
    print(f"run {result.run_name} ({'resumed' if result.resumed else 'new'}), MLflow run {result.run_id}, "
          f"initialisation {result.backbone}")
    print(summary_line(result.metrics))
    if result.version:
        print(f"registered {result.registry_name} version {result.version} @{cfg.registry.alias} "
              f"(radimagenet registry show {result.registry_name}/{result.version})")
    return 0
