"""``radimagenet submit VERB [options] -- ARGS``: run ``radimagenet VERB ARGS`` as a Ray job on a cluster.

    radimagenet submit ingest --follow -- corpus/ --labels corpus/labels.csv --out s3://radimagenet/datasets/demo
    radimagenet submit pretrain --name demo --follow -- --config pipelines/demo-pretrain.yaml train.epochs=2

See :mod:`radimagenet.ops.jobs` for what is shipped, how credentials travel and how resubmission resumes.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
The job runs `python -m radimagenet VERB ARGS` with this machine's radimagenet package (py_modules).
Relative paths of existing local files/folders are made absolute for a cluster on this machine; for a
remote cluster small files below the current folder are shipped, folders must be on shared storage.
S3/MLflow endpoints are passed as env vars; credentials are NOT (the job uses the cluster's own)
unless --ship-credentials: then they are readable by anyone with the cluster token via the Jobs API.
The job id is VERB-NAME (NAME: --name, else the run name / --out); submitting the same NAME again
resumes (new attempt NAME-2, NAME-3 ...); refused while an attempt is still running."""


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray dashboard / Jobs API URL (default: $RAY_API_SERVER_ADDRESS, "
                   "else $RAY_ADDRESS)")
    p.add_argument("--follow", action="store_true",
                   help="print the job's log until it ends; exit non-zero unless it succeeded")
    p.add_argument("--name", help="job name: the same name resumes the same work (default: the run name, "
                   "or the --out prefix for ingest)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs reserved for the job's driver (default 0)")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs reserved for the job's driver (default 0)")
    p.add_argument("--ship-credentials", action="store_true",
                   help="also send AWS/MLflow credentials set here as env vars (visible through the Jobs API "
                   "to anyone holding the cluster token)")


FLAGS = ("--follow", "--ship-credentials")
VALUED = ("--address", "--name", "--num-cpus", "--num-gpus")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from radimagenet.ops.jobs import VERBS

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.usage = (f"radimagenet submit {{{','.join(VERBS)}}} [--address URL] [--follow] [--name NAME] "
               "[--num-cpus N] [--num-gpus N] [--ship-credentials] -- ARGS...")
    _options(p)
    # One REMAINDER positional: argparse (3.11) can neither take options between a positional and `--`
    # nor keep a `--` that directly follows a positional; split_args() splits it.
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="COMMAND [options] -- ARGS",
                   help=f"the command to run on the cluster ({', '.join(VERBS)}), submit options, then after "
                   "`--` the arguments of the local command")


def split_args(args: argparse.Namespace) -> argparse.Namespace:
    """Submit options given after the command (before `--`) merged in; ``args.args`` = the command's."""
    from radimagenet.errors import ConfigError
    from radimagenet.ops.jobs import VERBS

    rest = list(args.args)
    if not rest or rest[0] not in VERBS:
        raise ConfigError(f"say which command to submit: radimagenet submit {{{','.join(VERBS)}}} [options] "
                          f"-- ARGS (got {rest[0] if rest else 'nothing'!r})")
    args.command, rest = rest[0], rest[1:]
    i = 0  # leading submit options
    while i < len(rest):
        tok = rest[i]
        if tok in FLAGS or tok.startswith(tuple(f"{v}=" for v in VALUED)):
            i += 1
        elif tok in VALUED:
            i += 2
        else:
            break
    head, tail = rest[:i], rest[i:]
    if tail[:1] == ["--"]:
        tail = tail[1:]
    sub = argparse.ArgumentParser(prog=f"radimagenet submit {args.command}", allow_abbrev=False,
                                  description="submit options go before `--`")
    _options(sub)
    opts = sub.parse_args(head)
    for key, value in vars(opts).items():
        if value not in (None, False):
            setattr(args, key, value)
    args.args = tail
    return args


def parse_command(verb: str, args: list[str]) -> argparse.Namespace:
    """``radimagenet VERB ARGS`` parsed by the verb's own parser (argparse errors exit): what
    :mod:`radimagenet.ops.jobs` checks a submission's arguments and finds its resume key with."""
    from radimagenet.commands import parse

    return parse(verb, args)


def run(args: argparse.Namespace) -> int:
    from radimagenet.ops import jobs

    args = split_args(args)
    sub = jobs.submit(args.command, list(args.args), args.address, parse=parse_command, name=args.name,
                      num_cpus=args.num_cpus, num_gpus=args.num_gpus, ship_credentials=args.ship_credentials)
    for warning in sub.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if sub.skipped:
        print(sub.skipped)
        return 0
    print(f"submitted {sub.submission_id} to {sub.address}"
          + (f" (attempt {sub.attempt}; previous: {sub.previous})" if sub.previous else ""))
    print(f"  entrypoint: {jobs.sanitise(sub.entrypoint)}")
    if sub.shipped_files:
        print(f"  shipped: {', '.join(sub.shipped_files)}")
    creds = (f"shipped ({', '.join(sub.credentials_shipped)})" if sub.credentials_shipped
             else "not shipped (the job uses the cluster's own)")
    print(f"  env: {sub.describe_env()}; credentials {creds}")
    if not args.follow:
        print(f"follow: radimagenet jobs logs {sub.submission_id} --follow   stop: radimagenet jobs stop "
              f"{sub.submission_id}")
        return 0
    return follow_exit(sub.submission_id, sub.address)


def follow_exit(job_id: str, address: str | None) -> int:
    """Follow ``job_id`` to its end; 0 when it succeeded, 1 otherwise (130 on Ctrl-C, the job goes on)."""
    from radimagenet.ops import jobs

    try:
        info = jobs.follow(job_id, address)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} goes on (radimagenet jobs stop {job_id} stops it)",
              file=sys.stderr)
        return 130
    status = str(info.status)
    message = jobs.sanitise(info.message or "", options=False)
    print(f"job {job_id} {status}" + (f": {message}" if message and status != "SUCCEEDED" else ""),
          file=sys.stderr if status != "SUCCEEDED" else sys.stdout)
    return 0 if status == "SUCCEEDED" else 1
