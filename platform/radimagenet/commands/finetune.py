"""``radimagenet finetune [--config FILE] [key=value ...]``: fine-tune a backbone downstream."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML preset (e.g. pipelines/finetune-classification.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. backbone=radimagenet-resnet50@champion "
                             "data.manifest=s3://radimagenet/datasets/thyroid train.freeze=top10 train.lr=1e-3; "
                             "init=scratch|imagenet model.arch=resnet50 instead of a backbone; "
                             "task=segmentation for a U-Net")
    parser.add_argument("--in-process", action="store_true",
                        help="train in this process (one worker, no Ray): debugging and notebooks")
    parser.add_argument("--print-config", action="store_true",
                        help="print the config (before dataset-dependent defaults) and exit")


def run(args: argparse.Namespace) -> int:
    import yaml

    from radimagenet.config import load_config, to_dict
    from radimagenet.finetune import FinetuneConfig, validate

    cfg = validate(load_config(FinetuneConfig, args.config, args.overrides))
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from radimagenet.finetune import finetune, summary_line

    result = finetune(cfg, in_process=args.in_process)
    print(f"run {result.run_name} ({'resumed' if result.resumed else 'new'}), MLflow run {result.run_id}, "
          f"initialisation {result.backbone}")
    print(summary_line(result.metrics))
    return 0
