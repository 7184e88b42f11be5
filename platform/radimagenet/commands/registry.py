"""``radimagenet registry list|promote``: registered backbones in MLflow."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="registered backbone versions")
    ls.add_argument("name", nargs="?", help="only this registered model")
    promote = sub.add_parser("promote", help="point an alias (default: champion) at a version")
    promote.add_argument("name")
    promote.add_argument("version", help="a version number, an alias it carries now (e.g. candidate), or latest")
    promote.add_argument("--alias", default="champion")


def _fmt(value: str) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return value or "-"


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
    rows = tracking.list_backbones(uri, args.name)
    header = ("NAME", "VERSION", "ALIASES", "ARCH", "DATASET", "VAL ACC", "VAL AUC")
    table = [header] + [
        (r["name"], r["version"], ",".join(r["aliases"]) or "-", r["arch"] or "-",
         (r["dataset_digest"] or "-")[:19], _fmt(r["accuracy"]), _fmt(r["auc"]))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(no registered backbones)")
    return 0
