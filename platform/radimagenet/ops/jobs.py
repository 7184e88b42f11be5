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
secret's value is refused.

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
import datetime as _dt
import ipaddress
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from radimagenet.errors import ConfigError, RadImageNetError

VERBS = ("ingest", "pretrain", "finetune", "compare")
ACTIVE = ("PENDING", "RUNNING")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

#: Non-secret settings the job gets from the submitting machine.
SHIPPED_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")
#: Secrets: only with ``ship_credentials=True``; never in entrypoint, metadata or output.
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                  "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                  "RADIMAGENET_DEID_SECRET")
#: Set in a job's env when credentials were shipped: its Ray Train workers receive them as well.
SHIP_FLAG = "RADIMAGENET_SHIP_CREDENTIALS"
#: Also redacted from anything we print (the cluster token).
_REDACT_ENV = CREDENTIAL_ENV + ("RAY_AUTH_TOKEN",)
SHIP_FILE_MAX_BYTES = 10 * 1024 * 1024
META = "radimagenet."
CONNECT_TIMEOUT_S = 5.0


class JobError(RadImageNetError):
    """The Ray Jobs API is unreachable, refuses us, or has no such job; or a job cannot be submitted."""


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
    warnings: list[str] = dataclasses.field(default_factory=list)
    credentials_shipped: list[str] = dataclasses.field(default_factory=list)  # names only
    skipped: str | None = None  # why nothing was submitted (e.g. the dataset already exists)
    previous: str | None = None  # the latest earlier attempt, if any, and how it ended

    def describe_env(self) -> str:
        """The env var names the job gets from us (never values: some may be secrets)."""
        return ", ".join(sorted(self.runtime_env.get("env_vars", {}))) or "none"


@dataclasses.dataclass(frozen=True)
class JobRow:
    submission_id: str
    status: str
    entrypoint: str  # sanitised
    start: str
    end: str
    message: str
    type: str


# ---------------------------------------------------------------- addresses and the client


def resolve_address(address: str | None = None) -> str:
    """The Jobs API (dashboard) URL: ``address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``."""
    raw = (address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "").strip()
    if not raw:
        raise JobError("no Ray cluster address: pass --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS "
                       "(for the local stack: eval \"$(radimagenet stack env)\")")
    if raw == "auto" or raw.startswith(("ray://", "anyscale://")):
        raise JobError(f"Ray address {raw!r} is not a Jobs API address: use the dashboard URL, "
                       "e.g. --address http://HEAD:8265")
    if "://" not in raw:
        raw = f"http://{raw}"
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise JobError(f"Ray address {raw!r} is not an http(s) dashboard URL like http://HEAD:8265")
    return raw.rstrip("/")


def is_local_address(address: str) -> bool:
    """Whether the cluster at ``address`` runs on this machine (loopback, our host name or address)."""
    host = (urlparse(address).hostname or "").lower()
    if host in ("localhost", "localhost.localdomain"):
        return True
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return True
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    if host in names:
        return True
    try:
        mine = {info[4][0] for n in names for info in socket.getaddrinfo(n, None)}
        theirs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(mine & theirs)


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check_reachable(address: str) -> None:
    """Fail in seconds (not a TCP timeout of minutes) when nothing listens at ``address``."""
    parsed = urlparse(address)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise JobError(f"cannot reach the Ray dashboard at {address} ({exc.strerror or exc}): is the cluster "
                       "up (`radimagenet stack status`) and the address right?") from None


def _translate(exc: BaseException, address: str, job_id: str | None = None) -> JobError | None:
    """A clear JobError for a failure of a Jobs API call, or None when it is not one we know."""
    text = str(exc)
    name = type(exc).__name__
    if name == "AuthenticationError" or "status code 401" in text or "status code 403" in text:
        if "401" in text or "Authentication required" in text or "couldn't find" in text:
            return JobError(f"the Ray dashboard at {address} requires a token and none was found: set "
                            "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); the local stack's is in "
                            "`radimagenet stack env`")
        return JobError(f"the Ray dashboard at {address} refused the token in RAY_AUTH_TOKEN: it is not this "
                        "cluster's token")
    if job_id is not None and ("status code 404" in text or "does not exist" in text):
        return JobError(f"no job {job_id!r} on {address}; `radimagenet jobs list` shows the jobs there")
    if isinstance(exc, ConnectionError) or "ConnectionError" in name or "Failed to connect" in text:
        return JobError(f"cannot reach the Ray dashboard at {address}: is the cluster up and the address right?")
    return None


@contextlib.contextmanager
def _api(address: str, job_id: str | None = None) -> Iterator[None]:
    try:
        yield
    except RadImageNetError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray and requests raise many types; we map the known ones
        mapped = _translate(exc, address, job_id)
        if mapped is None:
            raise JobError(f"the Ray Jobs API at {address} failed: {sanitise(text_of(exc), options=False)}") from exc
        raise mapped from None


def text_of(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def client(address: str | None = None):
    """A connected ``JobSubmissionClient`` (with the token of ``RAY_AUTH_TOKEN``), or a clear JobError."""
    from ray.job_submission import JobSubmissionClient

    addr = resolve_address(address)
    _check_reachable(addr)
    with _api(addr):
        c = JobSubmissionClient(addr, headers=_auth_headers())
    c.radimagenet_address = addr  # type: ignore[attr-defined]
    return c


def _addr(c) -> str:
    return getattr(c, "radimagenet_address", "the Ray dashboard")


# ---------------------------------------------------------------- secrets


def secret_values(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Local secret values worth redacting (name -> value), ignoring ones too short to mean anything."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in _REDACT_ENV if len(env.get(k, "")) >= 6}


_SECRET_OPT = re.compile(
    r"(?i)((?:--?[\w.-]*(?:secret|password|passwd|token|access[_-]?key|api[_-]?key|credential)[\w.-]*[= ])"
    r"|(?:\b[\w.]*(?:secret|password|token|access_key|api_key)[\w.]*=))(\S+)")


def sanitise(text: str, environ: dict[str, str] | None = None, options: bool = True) -> str:
    """``text`` with local secret values replaced by <redacted>; with ``options`` (command lines, not
    logs) also the values of secret-looking options (``--secret-key X``) and assignments (``TOKEN=X``)."""
    for value in secret_values(environ).values():
        text = text.replace(value, "<redacted>")
    return _SECRET_OPT.sub(lambda m: m.group(1) + "<redacted>", text) if options else text


# ---------------------------------------------------------------- planning a submission


def _slug(text: str, limit: int = 80) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    if len(s) > limit:
        import hashlib

        s = s[: limit - 9].rstrip("-.") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return s


def _parse(verb: str, args: list[str]):
    """The command's own parser on ``args``: catches typos here instead of in a failed job."""
    from radimagenet.cli import build_parser

    try:
        return build_parser(verb).parse_args([verb, *args])
    except SystemExit as exc:
        if exc.code == 0:  # --help: argparse printed it
            raise JobError(f"`radimagenet {verb} --help` is not something to submit") from None
        raise ConfigError(f"the arguments are not valid for `radimagenet {verb}` (see above)") from None


def _override(overrides: list[str], key: str) -> str | None:
    found = None
    for item in overrides:
        k, sep, v = item.partition("=")
        if sep and k.strip() == key:
            found = v.strip()
    return found


def _config_value(path: str | None, dotted: str) -> str | None:
    if not path or not os.path.isfile(path):
        return None
    import yaml

    try:
        node: Any = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return str(node) if node not in (None, "") else None


def job_name(verb: str, args: list[str], name: str | None = None,
             now: Callable[[], float] = time.time) -> tuple[str, list[str]]:
    """``(NAME, args)``: the job name and the arguments, with NAME added as the run name where the
    command resumes by run name and none was given (see the module doc)."""
    if verb not in VERBS:
        raise ConfigError(f"cannot submit {verb!r}: choose one of {', '.join(VERBS)}")
    ns = _parse(verb, args)
    args = list(args)
    stamp = _dt.datetime.fromtimestamp(now()).strftime("%Y%m%d-%H%M%S")
    key: str | None
    if verb in ("pretrain", "finetune"):
        key = _override(ns.overrides, "tracking.run_name") or _config_value(ns.config, "tracking.run_name")
        if not key:
            key = _slug(name) if name else f"{verb}-{stamp}"
            args.append(f"tracking.run_name={key}")
    elif verb == "compare":
        key = ns.run_name or None
        if not key:
            key = _slug(name) if name else f"{verb}-{stamp}"
            args += ["--run-name", key]
    else:
        key = ns.out.removeprefix("s3://").strip("/")
    chosen = _slug(name or key)
    if not chosen:
        raise ConfigError(f"job name {name!r} has no letters or digits")
    return chosen, args


def _base_id(verb: str, name: str) -> str:
    return name if name.startswith(f"{verb}-") else f"{verb}-{name}"


def rewrite_paths(args: list[str], local: bool, cwd: str | None = None
                  ) -> tuple[list[str], list[str], list[str]]:
    """``(args, files to ship, warnings)``: existing local paths made absolute (local cluster), or
    shipped (small files below ``cwd``) / made absolute with a warning (remote cluster)."""
    base = Path(cwd or os.getcwd()).resolve()
    out, ship, warnings = [], [], []

    def convert(value: str) -> str:
        if not value or "://" in value or value.startswith("-"):
            return value
        path = Path(value).expanduser()
        full = path if path.is_absolute() else base / path
        if not full.exists():
            return value
        full = full.resolve()
        if local:
            return str(full)
        try:
            rel = full.relative_to(base)
        except ValueError:
            rel = None
        if full.is_file() and rel is not None and full.stat().st_size <= SHIP_FILE_MAX_BYTES:
            ship.append(rel.as_posix())
            return rel.as_posix()
        kind = "folder" if full.is_dir() else "file"
        warnings.append(f"{kind} {value} is not shipped to the remote cluster: the job reads {full}, so it must "
                        f"be on storage every node mounts at that path (or put the data in S3)")
        return str(full)

    for arg in args:
        if arg.startswith("--") and "=" in arg:
            opt, _, value = arg.partition("=")
            out.append(f"{opt}={convert(value)}")
        elif re.match(r"^[A-Za-z_][\w.]*=", arg):
            key, _, value = arg.partition("=")
            out.append(f"{key}={convert(value)}")
        else:
            out.append(convert(arg))
    return out, sorted(set(ship)), warnings


def package_dir() -> str:
    """The folder of the radimagenet package this process runs (what ``py_modules`` ships)."""
    import radimagenet

    return str(Path(radimagenet.__file__).resolve().parent)


def build_env_vars(local: bool, ship_credentials: bool, environ: dict[str, str] | None = None
                   ) -> tuple[dict[str, str], list[str], list[str]]:
    """``(env_vars, names of credentials shipped, warnings)`` for the job's runtime env."""
    env = os.environ if environ is None else environ
    out = {"PYTHONUNBUFFERED": "1"}
    warnings = []
    for key in SHIPPED_ENV:
        value = env.get(key, "").strip()
        if not value:
            continue
        if not local and key != "AWS_DEFAULT_REGION":
            host = urlparse(value).hostname or ""
            if host == "localhost" or host.startswith("127.") or host == "::1":
                warnings.append(f"{key}={value} is a loopback address: not given to the remote cluster's job "
                                "(it uses the cluster's own setting)")
                continue
        out[key] = value
    if local and env.get("RADIMAGENET_HOME"):
        out["RADIMAGENET_HOME"] = str(Path(env["RADIMAGENET_HOME"]).expanduser().resolve())
    shipped = []
    if ship_credentials:
        for key in CREDENTIAL_ENV:
            if env.get(key):
                out[key] = env[key]
                shipped.append(key)
        out[SHIP_FLAG] = "1"  # the job's training workers get them too (train.launch.worker_env)
    return out, shipped, warnings


def plan(verb: str, args: list[str], address: str | None = None, *, name: str | None = None,
         ship_credentials: bool = False, attempt: int = 1, cwd: str | None = None,
         environ: dict[str, str] | None = None) -> Submission:
    """Everything about a submission that needs no cluster: name, id, entrypoint, runtime env.
    Files to ship are listed in ``shipped_files``; :func:`submit` stages them into a working_dir."""
    addr = resolve_address(address)
    local = is_local_address(addr)
    job, args = job_name(verb, args, name)
    args, ship, warnings = rewrite_paths(args, local, cwd)
    base = _base_id(verb, job)
    submission_id = base if attempt == 1 else f"{base}-{attempt}"
    env_vars, shipped_creds, env_warnings = build_env_vars(local, ship_credentials, environ)
    entrypoint = shlex.join(["python", "-m", "radimagenet", verb, *args])
    for key, value in secret_values(environ).items():
        if value in entrypoint:
            raise ConfigError(f"an argument holds the value of {key}: job entrypoints are visible to everyone "
                              "with access to the cluster; pass secrets through the environment instead")
    runtime_env: dict[str, Any] = {"py_modules": [package_dir()], "env_vars": env_vars,
                                   "excludes": ["__pycache__", "*.pyc"]}
    from radimagenet import __version__

    metadata = {f"{META}verb": verb, f"{META}job": base, f"{META}attempt": str(attempt),
                f"{META}version": __version__}
    return Submission(verb=verb, name=job, submission_id=submission_id, attempt=attempt, address=addr,
                      args=args, entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata,
                      shipped_files=ship, warnings=warnings + env_warnings, credentials_shipped=shipped_creds)


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
        from radimagenet.io import storage

        uri = storage.parse_uri(out).join("manifest.json")
        return str(uri) if storage.exists(uri) else None
    except Exception:  # noqa: BLE001 - no S3 access from here: the job will tell
        return None


def submit(verb: str, args: list[str], address: str | None = None, *, name: str | None = None,
           num_cpus: float | None = None, num_gpus: float | None = None, ship_credentials: bool = False,
           cwd: str | None = None) -> Submission:
    """Submit ``radimagenet VERB ARGS`` as a Ray job (see the module doc for names and resume)."""
    sub = plan(verb, args, address, name=name, ship_credentials=ship_credentials, cwd=cwd)
    base = _base_id(verb, sub.name)
    if verb == "ingest":
        ns = _parse(verb, sub.args)
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
        if sub.shipped_files:
            staging = tempfile.mkdtemp(prefix="radimagenet-submit-")
            base_dir = Path(cwd or os.getcwd()).resolve()
            for rel in sub.shipped_files:
                dest = Path(staging) / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(base_dir / rel, dest)
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


# ---------------------------------------------------------------- list, logs, follow, stop


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def list_jobs(address: str | None = None, include_drivers: bool = False) -> list[JobRow]:
    """The cluster's jobs, oldest first: submitted jobs (and with ``include_drivers``, plain drivers)."""
    c = client(address)
    with _api(_addr(c)):
        details = c.list_jobs()
    rows = []
    for d in sorted(details, key=lambda d: d.start_time or 0):
        sid = d.submission_id or ""
        if not sid and not include_drivers:
            continue
        rows.append(JobRow(sid or (d.job_id or "?"), str(d.status), sanitise(d.entrypoint or ""),
                           _time(d.start_time), _time(d.end_time), sanitise(d.message or "", options=False),
                           str(getattr(d.type, "value", d.type))))
    return rows


def job_info(job_id: str, address: str | None = None, c=None):
    """The job's ``JobDetails``; a clear JobError for an unknown id."""
    c = c or client(address)
    with _api(_addr(c), job_id):
        return c.get_job_info(job_id)


def logs(job_id: str, address: str | None = None) -> str:
    """The job's log so far, with local secret values redacted."""
    c = client(address)
    job_info(job_id, c=c)
    with _api(_addr(c), job_id):
        return sanitise(c.get_job_logs(job_id), options=False)


def follow(job_id: str, address: str | None = None, write: Callable[[str], Any] | None = None,
           poll_s: float = 1.0) -> Any:
    """Write the job's log (from its start) until it ends; return its final ``JobDetails``."""
    import asyncio

    write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    c = client(address)
    job_info(job_id, c=c)
    written = 0

    async def tail() -> None:
        nonlocal written
        async for chunk in c.tail_job_logs(job_id):
            write(sanitise(chunk, options=False))
            written += len(chunk)

    try:
        asyncio.run(tail())
    except Exception:  # noqa: BLE001 - the websocket dropped: poll the log instead
        pass
    # catch up (and poll while the job still runs, when the websocket ended early)
    while True:
        info = job_info(job_id, c=c)
        with _api(_addr(c), job_id):
            text = c.get_job_logs(job_id)
        if len(text) > written:
            write(sanitise(text[written:], options=False))
            written = len(text)
        if str(info.status) in TERMINAL:
            return info
        time.sleep(poll_s)


def wait(job_id: str, address: str | None = None, timeout_s: float = 600, poll_s: float = 1.0) -> Any:
    """Wait (without printing) until the job ends; its final ``JobDetails``."""
    c = client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        info = job_info(job_id, c=c)
        if str(info.status) in TERMINAL or time.monotonic() > deadline:
            return info
        time.sleep(poll_s)


def stop(job_id: str, address: str | None = None) -> tuple[bool, str]:
    """Ask the job to stop; ``(stop requested, status before)``; an ended job is left as it is."""
    c = client(address)
    info = job_info(job_id, c=c)
    if str(info.status) in TERMINAL:
        return False, str(info.status)
    with _api(_addr(c), job_id):
        return bool(c.stop_job(job_id)), str(info.status)
