"""``radimagenet synth``: write a synthetic, PHI-laden DICOM corpus for tests and demos."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``radimagenet synth``."""
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument("--images", required=True, type=int, help="number of DICOM files to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the corpus is deterministic)")
    parser.add_argument(
        "--task",
        choices=("pretrain", "downstream"),
        default="pretrain",
        help="pretrain: 11 RadImageNet-style classes; downstream: liver lesion yes/no with masks",
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="omit the planted quality problems (duplicates, a blank and a truncated file)",
    )
    parser.add_argument(
        "--unlabeled",
        action="store_true",
        help="write no labels.csv (pretrain only): OUT/images is then an unlabeled archive for "
        "`radimagenet ingest OUT/images --unlabeled` (patients come from the DICOM PatientID)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the corpus and print a one-line summary (never the PHI)."""
    from radimagenet.ops.synth import synthesize

    info = synthesize(args.out, args.images, seed=args.seed, task=args.task, clean=args.clean,
                      unlabeled=args.unlabeled)
    summary = {k: info[k] for k in ("task", "seed", "images", "patients", "classes", "planted")}
    print(json.dumps({"out": str(args.out), **summary}))
    return 0
