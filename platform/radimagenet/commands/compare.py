"""``radimagenet compare --backbones A B [...] --data URI --seeds 3 [--protocols finetune linear knn]
[--label-fractions 0.01 0.1 1] [key=value ...]``: initialisations head to head.

The list flags (``--backbones``, ``--protocols``, ``--label-fractions``) take every word up to the next
flag, so ``key=value`` overrides written right after one of them are handed back to the overrides (no
initialisation, protocol or share holds a ``=``)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from radimagenet.commands._training import keys_epilog
    from radimagenet.tasks.finetune_config import FinetuneConfig

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = keys_epilog(FinetuneConfig)
    parser.add_argument("--backbones", nargs="+", required=True, metavar="INIT",
                        help="initialisations: registry references (NAME@alias, NAME/VERSION), scratch, imagenet")
    parser.add_argument("--data", required=True, help="dataset made by `radimagenet ingest` (s3://BUCKET/PREFIX)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per initialisation (paired across them)")
    parser.add_argument("--protocols", nargs="+", metavar="PROTOCOL",
                        help="evaluate each initialisation by these: finetune (every layer), linear (the linear "
                        "probe), knn (no training); default: the config's protocol (finetune)")
    parser.add_argument("--label-fractions", nargs="+", metavar="F",
                        help="shares of the training labels, e.g. 0.01 0.1 1: the label-efficiency curve "
                        "(patient-level, stratified, nested across shares)")
    parser.add_argument("--config", help="fine-tuning preset (e.g. pipelines/finetune-classification.yaml)")
    parser.add_argument("--reference", help="the initialisation the others are tested against (default: the first)")
    parser.add_argument("--run-name", default="",
                        help="parent run name (children: <name>-init_<init>[-protocol_<p>][-label_fraction_<f>]"
                        "-seed_<seed>); the same name resumes, skipping finished runs")
    parser.add_argument("--in-process", action="store_true", help="run every fine-tuning in this process (no Ray)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="fine-tuning overrides for every run, e.g. model.arch=resnet50 train.epochs=20")


LIST_FLAGS = ("backbones", "protocols", "label_fractions")


def give_back_overrides(args: argparse.Namespace) -> None:
    """Move the ``key=value`` words a list flag swallowed (``--label-fractions 0.1 1 model.arch=x``) to the
    front of ``args.overrides`` (they were written before the positional ones); parse the label shares."""
    taken = []
    for name in LIST_FLAGS:
        values = getattr(args, name)
        if values:
            taken += [v for v in values if "=" in v]
            setattr(args, name, [v for v in values if "=" not in v])
    args.overrides = [*taken, *args.overrides]
    if args.label_fractions:
        from radimagenet.errors import ConfigError

        try:
            args.label_fractions = [float(v) for v in args.label_fractions]
        except ValueError:
            raise ConfigError(f"--label-fractions takes numbers in (0, 1], got {args.label_fractions}") from None


def run(args: argparse.Namespace) -> int:
    from radimagenet.tasks.compare import compare

    give_back_overrides(args)
    result = compare(args.backbones, args.data, seeds=args.seeds, config_path=args.config,
                     overrides=args.overrides, reference=args.reference, run_name=args.run_name,
                     in_process=args.in_process, protocols=args.protocols, label_fractions=args.label_fractions)
    print(f"comparison {result.run_name}: MLflow parent run {result.parent_run_id} "
          f"({len(result.runs)} nested fine-tuning runs)\n")
    print(result.markdown, end="")
    return 0
