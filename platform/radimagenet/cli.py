"""The ``radimagenet`` command: parses arguments, then calls one library function per verb.

Each verb lives in ``radimagenet.commands.<verb>`` and is imported only when it is used, so
``radimagenet --help`` does not pay for torch, ray or mlflow.
"""

from __future__ import annotations

import argparse
import os
import sys

from radimagenet import __version__
from radimagenet.commands import VERBS, add_verb
from radimagenet.errors import RadImageNetError


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``verb``'s module is imported to fill in its arguments."""
    parser = argparse.ArgumentParser(
        prog="radimagenet",
        description="RadImageNet-style pretrained backbones for radiology, end to end.",
        fromfile_prefix_chars="@",  # `radimagenet ingest @args.txt`: a submitted ingest's arguments (ops/jobs)
    )
    parser.add_argument("--version", action="version", version=f"radimagenet {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for name, help_text in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == verb:
            add_verb(p, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(verb if verb in VERBS else None)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (RadImageNetError, ValueError, FileNotFoundError, PermissionError) as exc:
        if os.environ.get("RADIMAGENET_DEBUG"):
            raise
        print(f"radimagenet {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"radimagenet {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
