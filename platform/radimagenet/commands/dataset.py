"""``radimagenet dataset inspect URI``, ``radimagenet dataset verify URI`` and ``radimagenet dataset overlap A B``."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    inspect = sub.add_parser("inspect", help="print the summary: splits, classes, counts, rejects by reason")
    inspect.add_argument("uri", help="s3://BUCKET/PREFIX (or its manifest.json)")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    verify = sub.add_parser("verify", help="re-read every shard and check counts and checksums")
    verify.add_argument("uri", help="s3://BUCKET/PREFIX (or its manifest.json)")
    over = sub.add_parser("overlap", help="images (exact and near copies) and patients two datasets share")
    over.add_argument("a", help="dataset A: s3://BUCKET/PREFIX (or its manifest.json), e.g. the pretraining one")
    over.add_argument("b", help="dataset B, e.g. the downstream one; counts are of B's images")
    over.add_argument("--json", action="store_true", help="print the report as JSON")
    over.add_argument("--split-a", default="", metavar="SPLITS", help="splits of A to compare, comma-separated (default: all)")
    over.add_argument("--split-b", default="", metavar="SPLITS", help="splits of B to compare, e.g. test (default: all)")
    over.add_argument("--examples", type=int, default=10, metavar="N", help="example pairs listed per kind (default 10)")
    over.add_argument("--no-cache", action="store_true",
                      help="neither read nor write the fingerprints cached next to each dataset (_fingerprints/)")


def run(args: argparse.Namespace) -> int:
    import json

    from radimagenet.dataset.format import load_manifest
    from radimagenet.dataset.inspect import summary
    from radimagenet.dataset.verify import verify

    if args.action == "overlap":
        return _overlap(args)
    manifest = load_manifest(args.uri)
    if args.action == "inspect":
        print(json.dumps(manifest, indent=2) if args.json else summary(manifest))
        return 0
    problems = verify(manifest)
    shards = sum(len(s["shards"]) for s in manifest["splits"].values())
    if problems:
        print("\n".join(problems))
        print(f"FAILED: {len(problems)} problem(s) in {shards} shard(s)")
        return 1
    print(f"OK: {shards} shard(s), {manifest['counts']['written']} samples, checksums and counts match")
    return 0


def _overlap(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from radimagenet.dataset.format import load_manifest
    from radimagenet.dataset.overlap import overlap, summary

    a, b = load_manifest(args.a), load_manifest(args.b)
    splits = {"a": [s for s in args.split_a.split(",") if s], "b": [s for s in args.split_b.split(",") if s]}
    with tqdm(unit="image", desc="fingerprints", leave=False) as bar:
        report = overlap(a, b, splits_a=splits["a"] or None, splits_b=splits["b"] or None,
                         examples=max(0, args.examples), cache=not args.no_cache, progress=bar.update)
    print(json.dumps(report, indent=2) if args.json else summary(report))
    return 0
