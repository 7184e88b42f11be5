"""``radimagenet stack up | down | status | env``: the embedded local stack (S3, MLflow, Ray head)."""

from __future__ import annotations

import argparse
import shlex
import sys

from radimagenet.ops import stack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status", "env"],
                        help="up: start and wait; down: stop; status: show each service; "
                             "env: print `export` lines (eval \"$(radimagenet stack env)\")")
    parser.add_argument("--home", default=None,
                        help="state folder (default: $RADIMAGENET_HOME, else ./.radimagenet)")


def _print_status(home: str | None) -> bool:
    rows = stack.status(home)
    for s in rows:
        pid = f"pid {s.pid}" if s.pid else ""
        print(f"{s.name:<8} {s.address:<28} {'up' if s.up else 'down':<5} {pid}".rstrip())
    return all(s.up for s in rows)


def _warn_disk(home: str | None) -> None:
    warning = stack.disk_warning(home)
    if warning:
        print(f"radimagenet stack: warning: {warning}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.action == "env":
        for key, value in stack.env(args.home).items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    if args.action == "up":
        _warn_disk(args.home)
        stack.up(args.home)
        _print_status(args.home)
        print(f"stack is up in {stack.home_dir(args.home)}; for clients: "
              'eval "$(radimagenet stack env)"', file=sys.stderr)
        return 0
    if args.action == "down":
        stopped = stack.down(args.home)
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return 0
    _warn_disk(args.home)
    return 0 if _print_status(args.home) else 1
