"""``radimagenet dataset inspect URI`` and ``radimagenet dataset verify URI``."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    inspect = sub.add_parser("inspect", help="print the summary: splits, classes, counts, rejects by reason")
    inspect.add_argument("uri", help="s3://BUCKET/PREFIX (or its manifest.json)")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    verify = sub.add_parser("verify", help="re-read every shard and check counts and checksums")
    verify.add_argument("uri", help="s3://BUCKET/PREFIX (or its manifest.json)")


def run(args: argparse.Namespace) -> int:
    import json

    from radimagenet.dataset.format import load_manifest
    from radimagenet.dataset.inspect import summary
    from radimagenet.dataset.verify import verify

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
