"""``radimagenet sweep [--config FILE] [key=value ...] [grid.key=a,b ...] [sweep.key=value ...]``: a grid of
fine-tuning runs on Ray Tune under one parent run."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from radimagenet.commands._training import config_keys, keys_epilog
    from radimagenet.tasks.finetune_config import FinetuneConfig
    from radimagenet.tasks.sweep_config import SweepSection

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sweep_keys = "\n".join(f"  sweep.{k} = {v}" for k, v in config_keys(SweepSection))
    parser.epilog = (
        "grid: any fine-tuning key below as grid.KEY=v1,v2 (or a YAML list under grid:), crossed in the order\n"
        "given; grid.init takes backbone, scratch, imagenet or a registry reference; grid.cases (YAML) is a list\n"
        "of partial settings crossed as one axis (pipelines/sweep-paper.yaml: the paper's 24 settings).\n"
        f"sweep keys:\n{sweep_keys}\n" + keys_epilog(FinetuneConfig))
    parser.add_argument("--config", help="YAML preset (e.g. pipelines/sweep-paper.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="e.g. data.manifest=s3://radimagenet/datasets/thyroid sweep.name=thyroid "
                        "backbone=NAME@champion grid.init=backbone,scratch grid.train.lr=1e-3,1e-4 grid.train.seed=0,1,2")
    parser.add_argument("--print-trials", action="store_true",
                        help="list the trials (name and values) and exit: nothing runs, nothing is contacted")


def run(args: argparse.Namespace) -> int:
    from radimagenet.tasks.sweep_config import load_sweep

    spec = load_sweep(args.config, args.overrides)
    if args.print_trials:
        for t in spec.trials:
            print(f"{t.name}\t{', '.join(f'{k}={v}' for k, v in t.values.items())}")
        print(f"{len(spec.trials)} trials; reference init for the paired tests: {spec.sweep.reference}")
        return 0
    from radimagenet.tasks.sweep import sweep

    result = sweep(spec)
    print(f"sweep {result.name}: MLflow parent run {result.parent_run_id} ({len(result.results)} trials, "
          f"{len(result.skipped)} finished before)\n")
    print(result.markdown, end="")
    return 0
