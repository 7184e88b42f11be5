"""``radimagenet jobs list | logs ID [--follow] | stop ID``: the Ray jobs of a cluster."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray dashboard / Jobs API URL (default: $RAY_API_SERVER_ADDRESS, "
                   "else $RAY_ADDRESS)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="the submitted jobs: id, status, entrypoint, start and end time")
    ls.add_argument("--all", action="store_true", help="also plain drivers (jobs not submitted)")
    lg = sub.add_parser("logs", help="print a job's log")
    lg.add_argument("id", help="submission id (see `radimagenet jobs list`)")
    lg.add_argument("--follow", "-f", action="store_true",
                    help="keep printing until the job ends; exit non-zero unless it succeeded")
    st = sub.add_parser("stop", help="stop a running job")
    st.add_argument("id", help="submission id (see `radimagenet jobs list`)")
    for q in (ls, lg, st):  # also accepted after the action
        q.add_argument("--address", dest="address_after", help=argparse.SUPPRESS)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _short(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def run(args: argparse.Namespace) -> int:
    from radimagenet.ops import jobs

    address = getattr(args, "address_after", None) or args.address
    if args.action == "list":
        rows = jobs.list_jobs(address, include_drivers=args.all)
        if not rows:
            print("no jobs")
            return 0
        print(_table([["ID", "STATUS", "START", "END", "ENTRYPOINT"]]
                     + [[r.submission_id, r.status, r.start, r.end, _short(r.entrypoint)] for r in rows]))
        return 0
    if args.action == "logs":
        if args.follow:
            from radimagenet.commands.submit import follow_exit

            return follow_exit(args.id, address)
        sys.stdout.write(jobs.logs(args.id, address))
        return 0
    requested, before = jobs.stop(args.id, address)
    print(f"stop requested for {args.id} (was {before})" if requested
          else f"job {args.id} already ended ({before}); nothing to stop")
    return 0
