"""Arguments and config loading shared by the training verbs (``pretrain``, ``finetune``, ``compare``).

Training verbs take a config: ``--config FILE`` (a YAML preset from ``pipelines/``) and dotted
``key=value`` overrides; ``--help`` lists every key with its default, ``--print-config`` prints the
config without touching S3, MLflow or Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def config_keys(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    """``[(dotted key, default), ...]`` of a dataclass config, sections flattened."""
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if dataclasses.is_dataclass(default):
            out += [(f"{prefix}{f.name}.{k}", v) for k, v in config_keys_of(default)]
        else:
            out.append((f"{prefix}{f.name}", default))
    return out


def config_keys_of(section: Any) -> list[tuple[str, Any]]:
    """``[(key, value), ...]`` of a section instance (its own defaults, e.g. a task's TrainSection)."""
    return [(f.name, getattr(section, f.name)) for f in dataclasses.fields(section)]


def keys_epilog(cls: type) -> str:
    """The ``--help`` text listing every config key and its default."""
    lines = [f"  {key} = {'' if value is None else value}" for key, value in config_keys(cls)]
    return "config keys (key=value; defaults shown):\n" + "\n".join(lines)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, preset: str, example: str) -> None:
    """``--config FILE``, ``key=value`` overrides, ``--in-process``, ``--print-config``; the keys in ``--help``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = keys_epilog(cls)
    parser.add_argument("--config", help=f"YAML preset (e.g. {preset})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"dotted overrides, e.g. {example}")
    parser.add_argument("--in-process", action="store_true",
                        help="train in this process (one worker, no Ray): debugging and notebooks")
    parser.add_argument("--print-config", action="store_true",
                        help="print the config (before dataset-dependent defaults) and exit")


def load_or_print(cls: type, validate: Any, args: argparse.Namespace) -> Any | None:
    """The validated config from ``args``; None once it has been printed for ``--print-config``
    (which needs no manifest: it checks the values, then prints before anything touches the data)."""
    import yaml

    from radimagenet.config import load_config, to_dict

    cfg = validate(load_config(cls, args.config, args.overrides), need_data=not args.print_config)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return None
    return cfg
