"""Arguments and config loading shared by the training verbs (``pretrain``, ``finetune``)."""

from __future__ import annotations

import argparse
from typing import Any


def add_config_arguments(parser: argparse.ArgumentParser, preset: str, overrides_help: str) -> None:
    """``--config FILE``, ``key=value`` overrides, ``--in-process`` and ``--print-config``."""
    parser.add_argument("--config", help=f"YAML preset (e.g. {preset})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    parser.add_argument("--in-process", action="store_true",
                        help="train in this process (one worker, no Ray): debugging and notebooks")
    parser.add_argument("--print-config", action="store_true",
                        help="print the config (before dataset-dependent defaults) and exit")


def load_or_print(cls: type, validate: Any, args: argparse.Namespace) -> Any | None:
    """The validated config from ``args``; None once it has been printed for ``--print-config``."""
    import yaml

    from radimagenet.config import load_config, to_dict

    cfg = validate(load_config(cls, args.config, args.overrides))
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return None
    return cfg
