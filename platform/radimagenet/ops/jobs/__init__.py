"""Running radimagenet commands as Ray jobs: submit, list, follow, stop.

    sub = submit("ingest", ["corpus", "--out", "s3://radimagenet/datasets/demo"], name="demo")
    status = follow(sub.submission_id)        # prints the job's log until it ends; "SUCCEEDED", ...
    rows = list_jobs(); text = logs("ingest-demo"); stop("ingest-demo")

**What is shipped.** The job runs the same CLI as a local run, ``python -m radimagenet VERB ARGS``,
on the cluster (``python`` of the cluster's image, which must hold the dependencies). The
``radimagenet`` package of the submitting machine travels as a Ray ``py_modules`` entry (the package
folder only, ~0.5 MB, ``__pycache__`` excluded): its folder comes first on the job's ``PYTHONPATH``,
so it shadows an older radimagenet installed in the cluster's image, and Ray gives it to every task
and actor of the job (ingest tasks, Ray Train workers). We do not ship the repository as
``working_dir``: it holds the virtualenv, the stack's data and corpora, and the job needs none of it.

**Paths in the arguments.** An argument (or ``--opt=VALUE``/``key=VALUE`` value) naming an existing
local file or folder is rewritten: for a *local* cluster (the address is this machine) to its
absolute path, which the job on the same machine reads directly (an ingest SOURCE folder, a
``--config`` file, a ``--secret-file``). For a *remote* cluster small files below the current folder
(``pipelines/demo-pretrain.yaml``) are copied into a ``working_dir`` at the same relative path, so
the relative argument resolves in the job; other paths (folders, large or outside files) are made
absolute with a warning: they must be on storage the cluster mounts at that path (shared storage),
or better, in S3.

**Credentials.** Non-secret settings travel as ``runtime_env.env_vars``: ``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_S3_ENDPOINT_URL`` (a loopback URL only to a
local cluster) and, for a local cluster, ``RADIMAGENET_HOME``. Secrets (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, MLflow user/password/token, the de-identification
secret) are *not* shipped by default: Ray 2.60 keeps the runtime env in the job's record and
returns ``runtime_env.env_vars`` in plain text from ``JobSubmissionClient.get_job_info``/``list_jobs``
and ``GET /api/jobs/`` to anyone holding the cluster token (the dashboard masks them only for
browsers). The job instead uses the cluster's own credentials: Ray workers inherit the environment of
the node's ``ray start`` (the local stack starts its head with the stack's S3/MLflow variables; a real
cluster uses instance/IAM roles or node environment). ``ship_credentials=True``
(``--ship-credentials``) sends the locally set ones in ``env_vars`` anyway, accepting that exposure.
Secrets never go into the entrypoint, the metadata, or printed text: an argument equal to a local
secret's value is refused. An ingest's arguments (its SOURCE and ``--labels`` paths, whose folder names
often carry names and record numbers) are not in the entrypoint either: they travel in a file of the
job's ``working_dir`` (``python -m radimagenet ingest @radimagenet-args.txt``).

**Names, resume and attempts.** A job's submission id is ``VERB-NAME`` where NAME is ``--name``, else
the command's own resume key: ``tracking.run_name`` (pretrain, finetune), ``--run-name`` (compare), the
``--out`` prefix (ingest); when there is none, NAME is ``VERB-<time>``. For pretrain/finetune/compare
without a run name, NAME is passed as the run name, so that submitting the same NAME again resumes
the same run from its checkpoint instead of starting over. Ray ids are single-use, so: when the
latest attempt of NAME is still PENDING/RUNNING the submission is refused; when it has ended
(SUCCEEDED, FAILED, STOPPED) the next attempt is ``VERB-NAME-2``, ``-3``... and the command itself
resumes (pretraining from its checkpoint, ingest from its journal). An ingest whose ``--out`` already
holds a finished dataset (``manifest.json``) is not submitted at all: :func:`submit` returns with
``skipped`` set (the CLI says so and exits 0); when S3 cannot be checked from here, the job is
submitted and the ingest itself reports "a dataset already exists".
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from radimagenet.errors import ConfigError
from radimagenet.io.cluster import CREDENTIAL_ENV, SHIP_FLAG
from radimagenet.ops.jobs.args import (
    SHIP_FILE_MAX_BYTES,
    SHIPPED_ENV,
    VERBS,
    Parser,
    _base_id,
    _parse,
    build_env_vars,
    job_name,
    package_dir,
    rewrite_paths,
)
from radimagenet.ops.jobs.client import (
    ACTIVE,
    CONNECT_TIMEOUT_S,
    TERMINAL,
    JobError,
    JobRow,
    _api,
    client,
    follow,
    is_local_address,
    job_info,
    list_jobs,
    logs,
    resolve_address,
    sanitise,
    secret_values,
    stop,
    text_of,
    wait,
)

__all__ = [
    "ACTIVE",
    "CONNECT_TIMEOUT_S",
    "CREDENTIAL_ENV",
    "META",
    "SHIPPED_ENV",
    "SHIP_FILE_MAX_BYTES",
    "SHIP_FLAG",
    "TERMINAL",
    "VERBS",
    "JobError",
    "JobRow",
    "Parser",
    "Submission",
    "build_env_vars",
    "client",
    "follow",
    "is_local_address",
    "job_info",
    "job_name",
    "list_jobs",
    "logs",
    "package_dir",
    "plan",
    "resolve_address",
    "rewrite_paths",
    "sanitise",
    "secret_values",
    "stop",
    "submit",
    "text_of",
    "wait",
]


META = "radimagenet."
# Verbs whose arguments name source files: Ray shows a job's entrypoint to everyone holding the cluster
# token (job list, dashboard), and folder names carry patient names and record numbers, so these jobs
# read their arguments from a file in their working_dir (`radimagenet ingest @radimagenet-args.txt`).
PRIVATE_ARGS_VERBS = frozenset({"ingest"})
ARGS_FILE = "radimagenet-args.txt"


@dataclasses.dataclass
class Submission:
    """What :func:`submit` did (or would do, from :func:`plan`)."""

    verb: str
    name: str  # the job name: attempts are NAME, NAME-2, ...
    submission_id: str
    attempt: int
    address: str
    args: list[str]  # the command's arguments as the job gets them
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    shipped_files: list[str] = dataclasses.field(default_factory=list)
    args_file: str | None = None  # the arguments, one per line, when they stay out of the entrypoint
    warnings: list[str] = dataclasses.field(default_factory=list)
    credentials_shipped: list[str] = dataclasses.field(default_factory=list)  # names only
    skipped: str | None = None  # why nothing was submitted (e.g. the dataset already exists)
    previous: str | None = None  # the latest earlier attempt, if any, and how it ended

    def describe_env(self) -> str:
        """The env var names the job gets from us (never values: some may be secrets)."""
        return ", ".join(sorted(self.runtime_env.get("env_vars", {}))) or "none"


# ---------------------------------------------------------------- planning and submitting


def plan(verb: str, args: list[str], address: str | None = None, *, parse: Parser, name: str | None = None,
         ship_credentials: bool = False, attempt: int = 1, cwd: str | None = None,
         environ: dict[str, str] | None = None) -> Submission:
    """Everything about a submission that needs no cluster: name, id, entrypoint, runtime env.
    Files to ship are listed in ``shipped_files``; :func:`submit` stages them into a working_dir.
    ``parse`` is the command's parser (see ``Parser``): arguments it refuses are not submitted."""
    addr = resolve_address(address)
    local = is_local_address(addr)
    job, args = job_name(verb, args, name, parse=parse)
    args, ship, warnings = rewrite_paths(args, local, cwd)
    base = _base_id(verb, job)
    submission_id = base if attempt == 1 else f"{base}-{attempt}"
    env_vars, shipped_creds, env_warnings = build_env_vars(local, ship_credentials, environ)
    if verb in PRIVATE_ARGS_VERBS and any("\n" in a or "\r" in a for a in args):
        raise ConfigError(f"an argument of {verb} holds a line break: it cannot be passed to a job; rename it")
    args_file = "".join(f"{a}\n" for a in args) if verb in PRIVATE_ARGS_VERBS else None
    entrypoint = shlex.join(["python", "-m", "radimagenet", verb, *([f"@{ARGS_FILE}"] if args_file else args)])
    for key, value in secret_values(environ).items():
        if value in shlex.join(args):
            raise ConfigError(f"an argument holds the value of {key}: job entrypoints are visible to everyone "
                              "with access to the cluster; pass secrets through the environment instead")
    runtime_env: dict[str, Any] = {"py_modules": [package_dir()], "env_vars": env_vars,
                                   "excludes": ["__pycache__", "*.pyc"]}
    from radimagenet import __version__

    metadata = {f"{META}verb": verb, f"{META}job": base, f"{META}attempt": str(attempt),
                f"{META}version": __version__}
    return Submission(verb=verb, name=job, submission_id=submission_id, attempt=attempt, address=addr,
                      args=args, entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata,
                      shipped_files=ship, args_file=args_file, warnings=warnings + env_warnings,
                      credentials_shipped=shipped_creds)


def _attempt_of(details, base: str) -> int | None:
    """The attempt number of a listed job when it belongs to job ``base``, else None."""
    sid = details.submission_id or ""
    meta = details.metadata or {}
    if meta.get(f"{META}job") == base:
        with contextlib.suppress(ValueError):
            return int(meta.get(f"{META}attempt", "1"))
    if sid == base:
        return 1
    m = re.fullmatch(re.escape(base) + r"-(\d+)", sid)
    return int(m.group(1)) if m and int(m.group(1)) >= 2 else None


def _dataset_complete(out: str) -> str | None:
    """``out``'s manifest URI when an ingest already finished there; None when not or unknown."""
    try:
        from radimagenet.dataset.format import manifest_uri
        from radimagenet.io import storage

        uri = manifest_uri(str(storage.parse_uri(out)))
        return uri if storage.exists(uri) else None
    except Exception:  # noqa: BLE001 - no S3 access from here: the job will tell
        return None


def submit(verb: str, args: list[str], address: str | None = None, *, parse: Parser, name: str | None = None,
           num_cpus: float | None = None, num_gpus: float | None = None, ship_credentials: bool = False,
           cwd: str | None = None) -> Submission:
    """Submit ``radimagenet VERB ARGS`` as a Ray job (see the module doc for names and resume);
    ``parse`` is the command's parser (see ``Parser``)."""
    sub = plan(verb, args, address, parse=parse, name=name, ship_credentials=ship_credentials, cwd=cwd)
    base = _base_id(verb, sub.name)
    if verb == "ingest":
        ns = _parse(parse, verb, sub.args)
        manifest = _dataset_complete(ns.out)
        if manifest:
            sub.skipped = (f"dataset {ns.out} is already complete ({manifest} exists): nothing to do, no job "
                           "submitted; to rebuild it choose another --out or delete it first")
            return sub
    c = client(sub.address)
    with _api(sub.address):
        attempts = sorted((a, d) for d in c.list_jobs() if (a := _attempt_of(d, base)) is not None)
    if attempts:
        latest_n, latest = attempts[-1][0], attempts[-1][1]
        for _, d in attempts:
            if str(d.status) in ACTIVE:
                raise JobError(f"job {d.submission_id} is still {d.status}: follow it with `radimagenet jobs "
                               f"logs {d.submission_id} --follow` or stop it with `radimagenet jobs stop "
                               f"{d.submission_id}` before submitting {sub.name!r} again")
        sub.attempt = latest_n + 1
        sub.submission_id = f"{base}-{sub.attempt}"
        sub.metadata[f"{META}attempt"] = str(sub.attempt)
        sub.previous = f"{latest.submission_id} ({latest.status})"
    runtime_env = dict(sub.runtime_env)
    staging = None
    try:
        if sub.shipped_files or sub.args_file:
            staging = tempfile.mkdtemp(prefix="radimagenet-submit-")
            base_dir = Path(cwd or os.getcwd()).resolve()
            for rel in sub.shipped_files:
                dest = Path(staging) / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(base_dir / rel, dest)
            if sub.args_file:
                (Path(staging) / ARGS_FILE).write_text(sub.args_file)
            runtime_env["working_dir"] = staging
        with _api(sub.address):
            try:
                c.submit_job(entrypoint=sub.entrypoint, submission_id=sub.submission_id,
                             runtime_env=runtime_env, metadata=sub.metadata,
                             entrypoint_num_cpus=num_cpus, entrypoint_num_gpus=num_gpus)
            except RuntimeError as exc:
                if "already" in str(exc).lower() and "exist" in str(exc).lower():
                    raise JobError(f"job {sub.submission_id} was submitted by someone else a moment ago; "
                                   "run the submission again for the next attempt") from None
                raise
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    return sub
