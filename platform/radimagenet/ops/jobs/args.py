"""Planning a submission without a cluster: the verbs, the job name (the command's resume key), the
arguments checked by the command's own parser, local paths rewritten or shipped, and the job's
environment variables (credentials only on request)."""

from __future__ import annotations

import datetime as _dt
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from radimagenet.errors import ConfigError
from radimagenet.io.cluster import CREDENTIAL_ENV, SHIP_FLAG
from radimagenet.ops.jobs.client import JobError

VERBS = ("ingest", "pretrain", "finetune", "compare")
#: Non-secret settings the job gets from the submitting machine.
SHIPPED_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")
SHIP_FILE_MAX_BYTES = 10 * 1024 * 1024
#: ``parse(verb, args)``: the command's own (CLI) parser on its arguments, e.g.
#: ``radimagenet.commands.submit.parse_command``; argparse errors exit (SystemExit).
Parser = Callable[[str, list[str]], Any]


def _slug(text: str, limit: int = 80) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    if len(s) > limit:
        import hashlib

        s = s[: limit - 9].rstrip("-.") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return s


def _parse(parse: Parser, verb: str, args: list[str]) -> Any:
    """The command's own parser on ``args``: catches typos here instead of in a failed job."""
    try:
        return parse(verb, list(args))
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
             now: Callable[[], float] = time.time, *, parse: Parser) -> tuple[str, list[str]]:
    """``(NAME, args)``: the job name and the arguments, with NAME added as the run name where the
    command resumes by run name and none was given (see the module doc). ``parse`` checks ``args``."""
    if verb not in VERBS:
        raise ConfigError(f"cannot submit {verb!r}: choose one of {', '.join(VERBS)}")
    ns = _parse(parse, verb, args)
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
        out[SHIP_FLAG] = "1"  # the job's training workers get them too (io.cluster.worker_env)
    return out, shipped, warnings
