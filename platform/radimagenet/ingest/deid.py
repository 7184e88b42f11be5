"""De-identification: pseudonymous patient keys and the metadata whitelist.

Nothing identifying leaves the source. The raw patient ID is only ever fed to a keyed hash (HMAC-SHA256
with a secret the user controls); sample metadata is rebuilt from a whitelist of non-identifying fields,
never copied from the header.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from radimagenet.errors import ConfigError

SECRET_ENV = "RADIMAGENET_DEID_SECRET"

# The only per-sample fields that may appear in shards (besides label, split and the pseudonym).
META_WHITELIST = (
    "modality", "body_part", "rows", "columns", "pixel_spacing", "photometric", "bits_stored",
    "frames", "transfer_syntax", "window", "source_format",
)


def load_secret(secret_file: str | None = None, home: Path | None = None) -> bytes:
    """The de-identification secret: ``--secret-file``, else ``$RADIMAGENET_DEID_SECRET``, else a
    random one created once in ``$RADIMAGENET_HOME/deid-secret`` (mode 0600) and reused."""
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
    home = home or Path(os.environ.get("RADIMAGENET_HOME", ".radimagenet")).expanduser()
    path = home / "deid-secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def secret_fingerprint(secret: bytes) -> str:
    """A short public fingerprint of the secret (which secret made a dataset; reveals nothing)."""
    return hmac.new(secret, b"radimagenet-secret-fingerprint", hashlib.sha256).hexdigest()[:12]


def patient_key(secret: bytes, patient_id: str) -> str:
    """Pseudonymous patient key: HMAC-SHA256(secret, patient_id), 16 hex digits."""
    return hmac.new(secret, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def split_of(key: str, fractions: tuple[float, float, float]) -> str:
    """Deterministic split from the patient key: a uniform number in [0, 1) from the key's bits."""
    u = int(key, 16) / float(16 ** len(key))
    train, val, _ = fractions
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


def clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Keep only whitelisted, non-identifying fields."""
    return {k: meta[k] for k in META_WHITELIST if k in meta}
