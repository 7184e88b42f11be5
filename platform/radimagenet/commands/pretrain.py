"""``radimagenet pretrain [--config FILE] [key=value ...]``: pretrain a backbone with Ray Train."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML preset (e.g. pipelines/pretrain-resnet50.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.epochs=2 scaling.num_workers=2 tracking.run_name=r1")
    parser.add_argument("--in-process", action="store_true",
                        help="train in this process (one worker, no Ray): debugging and notebooks")
    parser.add_argument("--print-config", action="store_true",
                        help="print the config (before dataset-dependent defaults) and exit")


def run(args: argparse.Namespace) -> int:
    import yaml

    from radimagenet.config import load_config, to_dict
    from radimagenet.train.config import PretrainConfig, validate

    cfg = validate(load_config(PretrainConfig, args.config, args.overrides))
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from radimagenet.train.launch import pretrain

    result = pretrain(cfg, in_process=args.in_process)
    m = result.metrics
    print(f"run {result.run_name} ({'resumed' if result.resumed else 'new'}), MLflow run {result.run_id}")
    print(f"val top-1 {m.get('val/top1', float('nan')):.4f}  top-5 {m.get('val/top5', float('nan')):.4f}  "
          f"AUC {m.get('val/auc_macro', float('nan')):.4f}")
    if result.version:
        print(f"registered {result.registry_name} version {result.version} @{cfg.registry.alias}")
    return 0
