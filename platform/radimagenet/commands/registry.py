"""``radimagenet registry list|show|promote``: registered backbones and fine-tuned models in MLflow."""

from __future__ import annotations

import argparse
import json
from typing import Any

SECTIONS = (("backbone", "Backbones (pretrained)", "VAL ACC", "VAL AUC"),
            ("finetuned", "Fine-tuned models", "TEST ACC", "TEST AUC"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="registered versions: backbones and fine-tuned models, apart")
    ls.add_argument("name", nargs="?", help="only this registered model")
    show = sub.add_parser("show", help="one version's record, metrics, lineage and model card")
    show.add_argument("ref", metavar="NAME[@alias|/version]", help="NAME@alias, NAME/VERSION or NAME (latest)")
    show.add_argument("--json", action="store_true", help="the record, tags and card as one JSON object")
    promote = sub.add_parser("promote", help="point an alias (default: champion) at a version")
    promote.add_argument("name")
    promote.add_argument("version", help="a version number, an alias it carries now (e.g. candidate), or latest")
    promote.add_argument("--alias", default="champion")


def _fmt(value: str) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return value or "-"


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def print_list(rows: list[dict[str, Any]]) -> None:
    """One section per kind: backbones (validation figures), fine-tuned models (task, origin, test figures)."""
    if not rows:
        print("(no registered models)")
    for kind, title, acc, auc in SECTIONS:
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        print(f"{title}:")
        if kind == "backbone":
            table = [("NAME", "VERSION", "ALIASES", "ARCH", "DATASET", acc, auc)] + [
                (r["name"], r["version"], ",".join(r["aliases"]) or "-", r["arch"] or "-",
                 (r["dataset_digest"] or "-")[:19], _fmt(r["accuracy"]), _fmt(r["auc"])) for r in mine]
        else:
            table = [("NAME", "VERSION", "ALIASES", "TASK", "ARCH", "FROM", "DATASET", auc, "TEST DICE")] + [
                (r["name"], r["version"], ",".join(r["aliases"]) or "-", r["task"], r["arch"] or "-",
                 r["backbone"] or "-", (r["dataset_digest"] or "-")[:19], _fmt(r["auc"]), _fmt(r["dice"]))
                for r in mine]
        _print_table(table)
        print()


def print_show(info: dict[str, Any]) -> None:
    """The version, its record (preprocessing), metrics and lineage, then its model card."""
    record = info["record"]
    tags = info["tags"]
    print(f"{info['name']} version {info['version']} ({info['kind']}, {record.task})"
          f"   aliases: {', '.join(info['aliases']) or '-'}")
    print("\nrecord:")
    for key in ("arch", "task", "objective", "in_chans", "input_size", "mean", "std", "interpolation", "classes",
                "dataset_digest", "ingest"):
        value = getattr(record, key)
        print(f"  {key:<15} {value if isinstance(value, str) else json.dumps(value)}")
    print("\nmetrics:")
    for key, value in sorted(record.metrics.items()):
        print(f"  {key:<34} {value:.6g}")
    if not record.metrics:
        print("  (none recorded)")
    print("\nlineage:")
    lineage = {"run_id": info["run_id"], **{k: v for k, v in record.source.items() if not isinstance(v, dict)},
               **{k: tags[k] for k in ("backbone", "backbone_dataset_digest", "dataset_uri", "overlap") if k in tags}}
    for key, value in lineage.items():
        print(f"  {key:<24} {value}")
    print(f"  {'source':<24} {info['source']}")
    print()
    print(info["card"] if info["card"] else "(no model card: registered before cards existed)")


def run(args: argparse.Namespace) -> int:
    from radimagenet.io import tracking

    uri = tracking.tracking_uri()
    tracking.check_reachable(uri)
    if args.action == "promote":
        v = args.version
        ref = f"{args.name}/{v}" if v.isdigit() else args.name if v == "latest" else f"{args.name}@{v}"
        version = str(tracking.resolve_backbone(uri, ref).version)
        tracking.set_alias(uri, args.name, version, args.alias)
        print(f"{args.name} version {version} is now @{args.alias}")
        return 0
    if args.action == "show":
        from radimagenet.models.registry import describe

        info = describe(args.ref, tracking_uri=uri)
        if args.json:
            print(json.dumps({**info, "record": info["record"].to_dict()}, indent=2))
        else:
            print_show(info)
        return 0
    print_list(tracking.list_backbones(uri, args.name))
    return 0
