"""De-identification: the site secret, keyed pseudonyms (patients, source paths), the local source map
and the metadata whitelist.

    secret = load_secret()                                 # ~/.config/radimagenet/deid-secret, made once
    source_pseudonym(secret, "SMITH^JOHN/IMG0001.dcm")     # 'src-' + 16 hex digits

Nothing identifying leaves the source. Raw patient IDs and source paths are only ever fed to a keyed
hash (HMAC-SHA256 with a secret the site controls); the map from source pseudonyms back to paths stays
on this machine, beside the secret (mode 0600). Sample metadata is rebuilt from a whitelist of fields
whose values must fit the field (:mod:`radimagenet.ingest.fields`), never copied from the header.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from radimagenet.errors import ConfigError
from radimagenet.ingest.fields import VALIDATORS

_json_str = json.encoder.encode_basestring_ascii  # a str as json.dumps writes it (ensure_ascii)

SECRET_ENV = "RADIMAGENET_DEID_SECRET"
HOME_ENV = "RADIMAGENET_HOME"
SECRET_NAME = "deid-secret"
MAP_DIR = "source-map"
_LEGACY_SECRET = Path(".radimagenet") / SECRET_NAME  # the old default, relative to the current folder

# The only per-sample fields that may appear in shards (besides label, split and the pseudonym).
META_WHITELIST = tuple(VALIDATORS)


def default_home() -> Path:
    """The per-user folder of the secret and the source maps: ``$RADIMAGENET_HOME``, else
    ``$XDG_CONFIG_HOME/radimagenet``, else ``~/.config/radimagenet`` (never the current folder)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser().resolve()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"  # XDG: relative = unset
    return base / "radimagenet"


def load_secret(secret_file: str | None = None, home: Path | None = None) -> bytes:
    """The de-identification secret: ``--secret-file``, else ``$RADIMAGENET_DEID_SECRET``, else a
    random one created once in ``default_home()/deid-secret`` (folder 0700, file 0600) and reused."""
    if secret_file:
        p = Path(secret_file).expanduser()
        if not p.is_file():
            raise ConfigError(f"secret file {p} does not exist")
        value = p.read_bytes().strip()
        if len(value) < 16:
            raise ConfigError(f"secret file {p} holds fewer than 16 bytes; use a long random secret")
        return value
    env = os.environ.get(SECRET_ENV)
    if env:
        if len(env) < 16:
            raise ConfigError(f"{SECRET_ENV} must be at least 16 characters")
        return env.encode()
    explicit = home is not None or bool(os.environ.get(HOME_ENV))
    home = home if home is not None else default_home()
    path = home / SECRET_NAME
    if not path.exists():
        if not explicit and _LEGACY_SECRET.is_file():
            raise ConfigError(
                f"found a de-identification secret in {_LEGACY_SECRET} (the old per-folder default) but none "
                f"in {path}: move it there (mkdir -p {home} && mv {_LEGACY_SECRET} {path}) to keep its "
                f"pseudonyms, or pass --secret-file {_LEGACY_SECRET}"
            )
        _create_secret(private_dir(home) / SECRET_NAME)
    value = path.read_bytes().strip()
    if len(value) < 16:
        raise ConfigError(f"secret file {path} holds fewer than 16 bytes; restore the site's secret, or delete "
                          f"the file to create a new one (new pseudonyms)")
    return value


def private_dir(path: Path) -> Path:
    """``path``, created (with missing parents) as mode 0700 when it does not exist yet."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    return path


def _create_secret(path: Path) -> None:
    """Write a random secret to ``path`` (0600) unless a concurrent first run got there first."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces a secret that exists
        except FileExistsError:
            pass
    finally:
        tmp.unlink()


def secret_fingerprint(secret: bytes) -> str:
    """A short public fingerprint of the secret (which secret made a dataset; reveals nothing)."""
    return hmac.new(secret, b"radimagenet-secret-fingerprint", hashlib.sha256).hexdigest()[:12]


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # file names need not be valid UTF-8


def patient_key(secret: bytes, patient_id: str) -> str:
    """Pseudonymous patient key: HMAC-SHA256(secret, patient_id), 16 hex digits."""
    return hmac.new(secret, _utf8(patient_id), hashlib.sha256).hexdigest()[:16]


def source_pseudonym(secret: bytes, path: str) -> str:
    """What shared storage calls a source path: ``src-`` + HMAC-SHA256(secret, "source:" + path), 16 hex."""
    return "src-" + hmac.new(secret, b"source:" + _utf8(path), hashlib.sha256).hexdigest()[:16]


def source_map_path(out: str, secret_file: str | None = None, home: Path | None = None) -> Path:
    """The local map of the dataset at ``out``: ``source-map/<16 hex of out>.jsonl`` beside the secret
    file (``--secret-file``), else in ``home`` (default: :func:`default_home`)."""
    base = Path(secret_file).expanduser().resolve().parent if secret_file else (home or default_home())
    return base / MAP_DIR / f"{hashlib.sha256(out.rstrip('/').encode()).hexdigest()[:16]}.jsonl"


def record_sources(map_path: Path, dataset: str, secret: bytes, items: Iterable[tuple[str, str, str]],
                   known: set[tuple[str, str]] | None = None) -> int:
    """Add ``(kind, path as given, absolute file)`` items not yet in the local map at ``map_path``, one
    ``{"pseudonym", "path", "file", "kind", "dataset"}`` line each; return how many were added
    (``known``: the map's entries, :func:`read_source_map`, when the caller has them)."""
    known = read_source_map(map_path) if known is None else known
    return append_sources(map_path, dataset, known,
                          [(kind, source_pseudonym(secret, path), path, file) for kind, path, file in items])


def read_source_map(map_path: Path) -> set[tuple[str, str]]:
    """The ``(pseudonym, path)`` pairs in the local map at ``map_path`` (none if it does not exist yet)."""
    try:
        old = map_path.read_bytes() if map_path.exists() else b""
    except OSError as exc:
        raise ConfigError(f"cannot read the local source map {map_path}: {exc.strerror or exc}") from None
    known = set()
    for line in old.splitlines():
        try:
            entry = json.loads(line)
            known.add((entry["pseudonym"], entry["path"]))
        except (ValueError, KeyError, TypeError):
            continue  # a torn line (a crash mid-write): its entry is written again when next seen
    return known


def append_sources(map_path: Path, dataset: str, known: set[tuple[str, str]],
                   items: Iterable[tuple[str, str, str, str]]) -> int:
    """Append ``(kind, pseudonym, path as given, absolute file)`` items not in ``known`` (which grows) to
    the local map at ``map_path``: one write, synced before this returns, so before anything on shared
    storage names them. The map is private (folder 0700, file 0600); a crash leaves at most a torn last
    line, which the next append ends first. The pseudonyms are the caller's (:func:`source_pseudonym`:
    an ingest's workers compute them, the driver only writes them down)."""
    tail = f', "dataset": {_json_str(dataset)}}}\n'
    new, added = [], set()
    for kind, pseudonym, path, file in items:
        if (pseudonym, path) not in known and (pseudonym, path) not in added:
            added.add((pseudonym, path))  # below: the line json.dumps writes for this entry, built 4x faster
            new.append(f'{{"pseudonym": "{pseudonym}", "path": {_json_str(path)}, "file": {_json_str(file)}, '
                       f'"kind": {_json_str(kind)}{tail}')
    if not new:
        return 0
    try:
        private_dir(map_path.parent)
        fd = os.open(map_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchmod(fd, 0o600)
            size = os.fstat(fd).st_size
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            data = memoryview(("\n" if torn else "").encode() + "".join(new).encode())
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"cannot write the local source map {map_path}: {exc.strerror or exc}; make its folder "
                          f"writable (it sits beside the secret: --secret-file, or $RADIMAGENET_HOME)") from None
    known |= added  # only once written: a caller that retries after an error writes them again
    return len(new)


def split_of(key: str, fractions: tuple[float, float, float]) -> str:
    """Deterministic split from the patient key: a uniform number in [0, 1) from the key's bits."""
    u = int(key, 16) / float(16 ** len(key))
    train, val, _ = fractions
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


def clean_meta(meta: dict[str, Any], dropped: list[str] | None = None) -> dict[str, Any]:
    """Keep only whitelisted fields whose value fits the field; the names of the others (present, but
    unfit) are appended to ``dropped``. Values are never copied as free text."""
    out = {}
    for name, check in VALIDATORS.items():
        if name in meta:
            if check(meta[name]):
                out[name] = meta[name]
            elif dropped is not None:
                dropped.append(name)
    return out


def count_dropped(per_sample: Iterable[Iterable[str]]) -> dict[str, int]:
    """``{field: samples whose value was dropped}``, sorted by field."""
    counts = collections.Counter(f for fields in per_sample for f in fields)
    return dict(sorted(counts.items()))
