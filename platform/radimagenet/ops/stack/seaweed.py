"""SeaweedFS's lock: a private CA, the certificates of the stack's weed components and the
``security.toml`` that makes weed require them (mutual TLS on the master, volume and filer HTTP ports
and on every gRPC port; JWT-signed reads and writes on the volume and filer servers).

    conf = configure(home)    # home/weed/: ca.pem, <component>.pem/.key, security.toml (0600, in a 0700 folder)
    client_tls(home)          # (cert, key, ca) paths a trusted client (a test, an admin tool) presents
    check_locked(home, ports) # raises StackError when a weed port answers without a client certificate

Only the S3 gateway stays plain HTTP (on 127.0.0.1; every request signed with the stack's S3 key).
The certificates are made on the first ``stack up`` and kept; a missing, expiring or foreign one is
reissued from the CA, so a home from before this lock gets it on its next start.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
from pathlib import Path
from typing import Any

from radimagenet.errors import StackError
from radimagenet.ops.stack.state import HOST, _credentials, _write_private

# The ports weed serves behind mutual TLS (every one but the S3 gateway's).
LOCKED_PORTS = ("weed_master", "weed_volume", "weed_filer", "weed_master_grpc", "weed_volume_grpc",
                "weed_filer_grpc", "s3_grpc")

# The weed components that serve (each gets its own certificate) and ``client``, the identity weed
# presents when it dials itself (gRPC and HTTPS between master, volume, filer and S3 gateway).
COMPONENTS = ("master", "volume", "filer", "s3", "client")
CA_DAYS, CERT_DAYS, RENEW_DAYS = 3650, 825, 30
JWT_TTL_S = 10  # weed's own default: a token opens one file (volume) or one request (filer) for 10 s


def conf_dir(home: Path) -> Path:
    """The folder weed reads its configuration from (its ``-config_dir``, working dir and HOME)."""
    return home / "weed"


def client_tls(home: Path) -> tuple[Path, Path, Path]:
    """(certificate, key, CA) of the stack's weed client identity."""
    d = conf_dir(home)
    return d / "client.pem", d / "client.key", d / "ca.pem"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: object) -> None:
    from cryptography.hazmat.primitives import serialization

    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()).decode())


def _write_cert(path: Path, cert: object) -> None:
    from cryptography.hazmat.primitives import serialization

    _write_private(path, cert.public_bytes(serialization.Encoding.PEM).decode())


def _load_ca(d: Path) -> tuple[object, object] | None:
    """The stack's CA (certificate, key) when both files are there and it is not about to expire."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if cert.not_valid_after_utc - _now() < datetime.timedelta(days=RENEW_DAYS):
        return None
    return cert, key


def _new_ca(d: Path) -> tuple[object, object]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"radimagenet stack CA {os.urandom(4).hex()}")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(d / "ca.key", key)
    _write_cert(d / "ca.pem", cert)
    return cert, key


def _cert_ok(path: Path, ca_cert: object) -> bool:
    """Whether ``path`` holds a certificate issued by ``ca_cert`` that is valid for a while yet."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
    except (OSError, ValueError, TypeError, InvalidSignature):  # unreadable, or not issued by our CA
        return False
    return cert.not_valid_after_utc - _now() >= datetime.timedelta(days=RENEW_DAYS)


def _issue(d: Path, component: str, ca: tuple[object, object]) -> None:
    """A key and certificate for ``component``: a TLS server and client name for 127.0.0.1/localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"radimagenet-weed-{component}")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(d / f"{component}.key", key)
    _write_cert(d / f"{component}.pem", cert)


def _security_toml(home: Path) -> str:
    """weed's security.toml: every key weed 4.x reads for TLS and JWT, with our files and keys."""
    d, creds = conf_dir(home), _credentials(home)

    def pair(component: str) -> dict[str, object]:
        return {"cert": str(d / f"{component}.pem"), "key": str(d / f"{component}.key")}

    ca = str(d / "ca.pem")
    sections: dict[str, dict[str, object]] = {
        # JWT: the master signs a token per file id for the volume server, the S3 gateway one per request
        # for the filer; without one, volume and filer refuse reads and writes (401)
        "jwt.signing": {"key": creds["weed_jwt_write"], "expires_after_seconds": JWT_TTL_S},
        "jwt.signing.read": {"key": creds["weed_jwt_read"], "expires_after_seconds": JWT_TTL_S},
        "jwt.filer_signing": {"key": creds["weed_filer_jwt_write"], "expires_after_seconds": JWT_TTL_S},
        "jwt.filer_signing.read": {"key": creds["weed_filer_jwt_read"], "expires_after_seconds": JWT_TTL_S},
        "access": {"ui": False},
        "filer.expose_directory_metadata": {"enabled": False},
        "guard": {"white_list": ""},
        # gRPC: mutual TLS on every server (weed's gRPC TLS is always mutual), our identity when dialling
        "grpc": {"ca": ca, "allowed_wildcard_domain": ""},
        **{f"grpc.{c}": pair(c) for c in ("master", "volume", "filer", "s3")},
        "grpc.client": pair("client"),
        # HTTP: TLS on master, volume and filer; `ca` makes each require a client certificate from it
        "https.client": {"enabled": True, **pair("client"), "ca": ca, "insecure_skip_verify": False},
        **{f"https.{c}": {**pair(c), "ca": ca} for c in ("master", "volume", "filer")},
    }
    sections["https.filer"]["disable_tls_verify_client_cert"] = False
    lines = ["# Written by `radimagenet stack up` at every start of SeaweedFS: edits are overwritten."]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        # TOML basic strings take JSON's escapes; booleans and integers are spelled alike too
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def configure(home: Path) -> Path:
    """Make (or complete) the CA, the component certificates and ``security.toml``; returns their folder."""
    d = conf_dir(home)
    d.mkdir(mode=0o700, exist_ok=True)
    d.chmod(0o700)
    ca = _load_ca(d)
    fresh_ca = ca is None
    if ca is None:
        ca = _new_ca(d)
    for component in COMPONENTS:
        if fresh_ca or not _cert_ok(d / f"{component}.pem", ca[0]) or not (d / f"{component}.key").exists():
            _issue(d, component, ca)
    _write_private(d / "security.toml", _security_toml(home))
    return d


def _handshake(port: int, ctx: ssl.SSLContext) -> str | None:
    """Open TLS to ``port`` and read; None when the server accepted us, else the reason it did not."""
    try:
        with socket.create_connection((HOST, port), timeout=3) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.settimeout(0.5)
            try:  # TLS 1.3 sends a refusal of the client certificate after the handshake: wait for it
                tls.recv(1)
            except TimeoutError:
                pass
            return None
    except (OSError, ssl.SSLError) as err:
        return str(err) or type(err).__name__


def check_locked(home: Path, ports: dict[str, Any]) -> None:
    """Fail closed: each weed port but S3's must speak TLS with the stack's CA, accept the stack's
    client certificate and refuse a client without one (weed falls back to plaintext, silently, when
    it cannot use a TLS setting)."""
    cert, key, ca = client_tls(home)
    trusted = ssl.create_default_context(cafile=str(ca))
    trusted.load_cert_chain(cert, key)
    anonymous = ssl.create_default_context(cafile=str(ca))
    for ctx in (trusted, anonymous):
        ctx.set_alpn_protocols(["h2", "http/1.1"])  # gRPC servers insist on h2
    for name in LOCKED_PORTS:
        port = int(ports[name])
        if (why := _handshake(port, trusted)) is not None:
            raise StackError(f"SeaweedFS port {port} ({name}) does not speak TLS with the stack's certificates "
                             f"({why}); see {conf_dir(home) / 'security.toml'} and the s3 log")
        if _handshake(port, anonymous) is None:
            raise StackError(f"SeaweedFS port {port} ({name}) accepts clients without a certificate; "
                             f"refusing to run it open (see {conf_dir(home) / 'security.toml'})")
