"""SeaweedFS behind the stack's lock: every port the weed process listens on, attacked the way another
user of the machine would (plain HTTP, TLS without a certificate or with one from another CA, gRPC, the
S3 port without a signature), reads and writes nothing, while the same data is there for the stack's own
identity (controls); the certificates survive a restart and a home from before the lock gets them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from radimagenet.errors import StackError
from radimagenet.ops import stack
from radimagenet.ops.stack import processes, seaweed, services, state

BUCKET = "radimagenet"
HTTP_PORTS = ("weed_master", "weed_volume", "weed_filer")
GRPC_PORTS = ("weed_master_grpc", "weed_volume_grpc", "weed_filer_grpc", "s3_grpc")


# ---------------------------------------------------------------- helpers: identities and requests


def _ports(home: Path) -> dict[str, int]:
    return json.loads((home / "state.json").read_text())["ports"]


def _s3():
    return boto3.session.Session().client("s3", region_name="us-east-1")


def _put_probe(prefix: str) -> tuple[str, bytes]:
    key, body = f"{prefix}/probe-{uuid.uuid4().hex[:8]}", os.urandom(24)
    _s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    return key, body


def _s3_has(key: str) -> bool:
    try:
        _s3().head_object(Bucket=BUCKET, Key=key)
        return True
    except ClientError as err:
        assert err.response["Error"]["Code"] in {"404", "NoSuchKey"}, err.response
        return False


def _identity(home: Path, who: str | Path) -> tuple[Path, Path] | None:
    """(certificate, key) a client presents: the stack's (``"ours"``), none (``"none"``), or the client
    certificate in folder ``who`` (another CA's)."""
    if who == "none":
        return None
    if who == "ours":
        return seaweed.client_tls(home)[:2]
    return Path(who) / "client.pem", Path(who) / "client.key"


def _ctx(home: Path, who: str | Path, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """A TLS client that trusts the stack's CA and presents ``who``'s certificate (see :func:`_identity`)."""
    ctx = ssl.create_default_context(cafile=str(seaweed.client_tls(home)[2]))
    if (pair := _identity(home, who)) is not None:
        ctx.load_cert_chain(*pair)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def _jwt(key: str, **claims: object) -> str:
    """An HS256 token as weed's master or S3 gateway makes them."""
    def part(obj: object) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=")

    msg = part({"alg": "HS256", "typ": "JWT"}) + b"." + part({"exp": int(time.time()) + 60, **claims})
    sig = base64.urlsafe_b64encode(hmac.new(key.encode(), msg, hashlib.sha256).digest()).rstrip(b"=")
    return (msg + b"." + sig).decode()


def _request(port: int, path: str, method: str = "GET", body: bytes | None = None, ctx=None,
             token: str | None = None) -> tuple[int | None, bytes]:
    """One HTTP(S) request: (status, body), or (None, the error) when the connection was refused."""
    conn = (http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10) if ctx is not None
            else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as err:
        return None, str(err).encode()
    finally:
        conn.close()


def _unix_request(path: Path, url: str, method: str, body: bytes | None) -> tuple[int, bytes]:
    """One plain HTTP request over the unix socket ``path``."""
    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(10)
            self.sock.connect(str(path))

    conn = Connection("localhost")
    try:
        conn.request(method, url, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _refused(result: tuple[int | None, bytes], *secrets: bytes) -> bool:
    """The server gave nothing: no connection, or an error status whose body holds none of ``secrets``."""
    status, body = result
    return (status is None or status >= 400) and not any(s in body for s in secrets)


def _tls_refused(result: tuple[int | None, bytes]) -> bool:
    """The TLS server turned the client away (no certificate, or one it does not trust): its alert, or the
    connection closed under the request when the alert lost the race with it (TLS 1.3)."""
    status, error = result
    reasons = (b"alert certificate required", b"alert unknown ca", b"EOF occurred in violation of protocol",
               b"Connection reset by peer", b"Broken pipe")
    return status is None and any(r in error for r in reasons)


def _fid(home: Path, key: str) -> str:
    """The volume file id of ``key``'s first chunk, asked from the filer as the stack itself would."""
    token = _jwt(state._credentials(home)["weed_filer_jwt_read"])
    status, body = _request(_ports(home)["weed_filer"], f"/buckets/{BUCKET}/{key}?metadata=true",
                            ctx=_ctx(home, "ours"), token=token)
    assert status == 200, body
    return json.loads(body)["chunks"][0]["file_id"]


def _other_ca(tmp_path: Path) -> Path:
    """A CA and client certificate made the way the stack makes its own, but not the stack's."""
    folder = tmp_path / "other-ca"
    folder.mkdir()
    seaweed._issue(folder, "client", seaweed._new_ca(folder))
    return folder


def _listening_ports(pid: int) -> set[int]:
    import psutil

    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


# ---------------------------------------------------------------- gRPC: hand-made protobuf requests


def _field(number: int, value: bytes | int | str) -> bytes:
    def varint(n: int) -> bytes:
        out = b""
        while True:
            out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                return out

    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    raw = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(raw)) + raw


def _grpc_calls(key: str, fid: str, intruder: str) -> dict[str, list[tuple[str, bytes]]]:
    """A read and a write per gRPC port: what an intruder would try."""
    folder, name = f"/buckets/{BUCKET}/{key}".rsplit("/", 1)
    entry = _field(1, intruder) + _field(9, b"intruder") + _field(4, _field(1, 8) + _field(2, int(time.time()))
                                                                  + _field(3, 0o644))
    return {
        "weed_master_grpc": [("/master_pb.Seaweed/LookupVolume", _field(1, fid.split(",")[0])),
                             ("/master_pb.Seaweed/Assign", _field(1, 1))],
        "weed_volume_grpc": [("/volume_server_pb.VolumeServer/VolumeServerStatus", b""),
                             ("/volume_server_pb.VolumeServer/BatchDelete", _field(1, fid))],
        "weed_filer_grpc": [("/filer_pb.SeaweedFiler/LookupDirectoryEntry", _field(1, folder) + _field(2, name)),
                            ("/filer_pb.SeaweedFiler/CreateEntry", _field(1, f"/buckets/{BUCKET}") + _field(2, entry))],
        "s3_grpc": [("/messaging_pb.SeaweedS3IamCache/GetPolicy", _field(1, "any")),
                    ("/messaging_pb.SeaweedS3IamCache/PutIdentity", _field(1, _field(1, "intruder")))],
    }


def _grpc(target: str, method: str, request: bytes, home: Path, who: str | Path) -> tuple[str, bytes]:
    """(status code name, response or error bytes) of one unary call: plaintext (``who="plain"``), or
    TLS presenting ``who``'s certificate (see :func:`_identity`)."""
    import grpc

    if who == "plain":
        channel = grpc.insecure_channel(target)
    else:
        ca = seaweed.client_tls(home)[2].read_bytes()
        pair = _identity(home, who)
        creds = grpc.ssl_channel_credentials(ca, *(pair[1].read_bytes(), pair[0].read_bytes()) if pair else ())
        channel = grpc.secure_channel(target, creds, [("grpc.ssl_target_name_override", "localhost")])
    try:
        return "OK", channel.unary_unary(method)(request, timeout=10)
    except grpc.RpcError as err:
        return err.code().name, (err.details() or "").encode()
    finally:
        channel.close()


# ---------------------------------------------------------------- the attacks


@pytest.fixture
def locked_home(stack_env) -> Path:
    return Path(stack_env["RADIMAGENET_HOME"])


@pytest.mark.integration
def test_weed_listens_on_the_configured_ports_only(locked_home):
    ports = _ports(locked_home)
    pid = processes._service_pid(locked_home, "s3")
    assert pid is not None
    expected = {ports[k] for k in ("s3",) + HTTP_PORTS + GRPC_PORTS}
    assert _listening_ports(pid) == expected  # nothing else (metrics, debug, iceberg) to protect


@pytest.mark.integration
def test_http_ports_refuse_plain_http_and_tls_without_our_certificate(locked_home, s3_prefix, tmp_path):
    home, ports = locked_home, _ports(locked_home)
    key, body = _put_probe(s3_prefix.removeprefix(f"s3://{BUCKET}/"))
    fid = _fid(home, key)
    intruder = f"{s3_prefix.removeprefix(f's3://{BUCKET}/')}/intruder-http"
    foreign = _other_ca(tmp_path)
    attempts = {  # port -> (method, path, body): reads of the probe and writes beside it
        "weed_master": [("GET", "/", None), ("GET", "/dir/assign", None), ("POST", "/dir/assign", b""),
                        ("GET", f"/dir/lookup?volumeId={fid.split(',')[0]}", None), ("GET", "/cluster/status", None),
                        ("GET", "/vol/status", None)],
        "weed_volume": [("GET", f"/{fid}", None), ("GET", "/status", None), ("POST", f"/{fid}", b"intruder"),
                        ("DELETE", f"/{fid}", None)],
        "weed_filer": [("GET", f"/buckets/{BUCKET}/{key}", None), ("GET", f"/buckets/{BUCKET}/", None),
                       ("GET", f"/buckets/{BUCKET}/{key}?metadata=true", None),
                       ("PUT", f"/buckets/{BUCKET}/{intruder}", b"intruder"),
                       ("POST", f"/buckets/{BUCKET}/{intruder}", b"intruder"),
                       ("DELETE", f"/buckets/{BUCKET}/{key}", None)],
    }
    secrets = (body, fid.encode(), key.encode(), b"127.0.0.1:", b"IsLeader")
    for name, requests in attempts.items():
        port = ports[name]
        for method, path, data in requests:
            plain = _request(port, path, method, data)
            assert _refused(plain, *secrets) and plain[0] in {None, 400}, (name, method, path, plain)
            for ctx in (_ctx(home, "none"), _ctx(home, foreign)):  # no certificate; one from another CA
                result = _request(port, path, method, data, ctx=ctx)
                assert _tls_refused(result), (name, method, path, result)
    # With the stack's certificate but no token, the volume and filer still refuse (JWT), the master answers
    trusted = _ctx(home, "ours")
    for name, requests in attempts.items():
        for method, path, data in requests:
            result = _request(ports[name], path, method, data, ctx=trusted)
            if name == "weed_master":
                assert result[0] == 200, (method, path, result)  # the control: these requests are real ones
            elif not (name == "weed_volume" and path == "/status"):
                assert result[0] == 401 and _refused(result, body), (name, method, path, result)
    creds = state._credentials(home)
    assert _request(ports["weed_volume"], f"/{fid}", ctx=trusted, token=_jwt("not-the-key", fid=fid))[0] == 401
    # The controls: the data is there, for the holder of the certificate and the signing keys
    assert _request(ports["weed_volume"], f"/{fid}", ctx=trusted, token=_jwt(creds["weed_jwt_read"], fid=fid)) \
        == (200, body)
    assert _request(ports["weed_filer"], f"/buckets/{BUCKET}/{key}", ctx=trusted,
                    token=_jwt(creds["weed_filer_jwt_read"])) == (200, body)
    # weed's unix socket for the filer speaks plain HTTP: only we can open it, and it wants the token too
    sock = processes._short_dir(home) / "weed" / "filer.sock"
    assert sock.stat().st_mode & 0o077 == 0 and sock.parent.stat().st_mode & 0o077 == 0
    for method, data in (("GET", None), ("PUT", b"intruder")):
        result = _unix_request(sock, f"/buckets/{BUCKET}/{key if method == 'GET' else intruder}", method, data)
        assert result[0] == 401 and _refused(result, body), (method, result)
    assert _s3().get_object(Bucket=BUCKET, Key=key)["Body"].read() == body  # nothing deleted or overwritten
    assert not _s3_has(intruder)


@pytest.mark.integration
def test_grpc_ports_refuse_clients_without_our_certificate(locked_home, s3_prefix, tmp_path):
    home, ports = locked_home, _ports(locked_home)
    prefix = s3_prefix.removeprefix(f"s3://{BUCKET}/")
    key, body = _put_probe(prefix)
    fid = _fid(home, key)
    intruder = f"intruder-grpc-{uuid.uuid4().hex[:8]}"
    foreign = _other_ca(tmp_path)
    sockets = {name: Path(f"/tmp/seaweedfs-{kind}-grpc-{ports[name]}.sock") for name, kind in (
        ("weed_master_grpc", "master"), ("weed_volume_grpc", "volume"), ("weed_filer_grpc", "filer"),
        ("s3_grpc", "s3"))}
    for name, calls in _grpc_calls(key, fid, intruder).items():
        targets = [f"127.0.0.1:{ports[name]}"]
        if sockets[name].exists():  # weed's same-host shortcut: a unix socket in /tmp, TLS as well
            assert sockets[name].stat().st_mode & 0o077 == 0, sockets[name]
            targets.append(f"unix:{sockets[name]}")
        for target in targets:
            for method, request in calls:
                for who in ("plain", "none", foreign):
                    code, detail = _grpc(target, method, request, home, who)
                    assert code == "UNAVAILABLE" and body not in detail, (target, method, who, code, detail)
        # The control: the same read with the stack's certificate reaches the service
        code, detail = _grpc(f"127.0.0.1:{ports[name]}", *calls[0], home, "ours")
        assert code != "UNAVAILABLE", (name, code, detail)
        if name == "weed_filer_grpc":
            assert code == "OK" and fid.encode() in detail
    assert _s3().get_object(Bucket=BUCKET, Key=key)["Body"].read() == body  # BatchDelete did nothing
    assert not _s3_has(intruder) and not _s3_has(f"{prefix}/{intruder}")


@pytest.mark.integration
def test_s3_port_refuses_requests_without_a_signature(locked_home, s3_prefix):
    key, body = _put_probe(s3_prefix.removeprefix(f"s3://{BUCKET}/"))
    port = _ports(locked_home)["s3"]
    intruder = f"{key}-intruder"
    for method, path, data in (("GET", f"/{BUCKET}/{key}", None), ("GET", f"/{BUCKET}?list-type=2", None),
                               ("GET", "/", None), ("PUT", f"/{BUCKET}/{intruder}", b"intruder"),
                               ("DELETE", f"/{BUCKET}/{key}", None), ("PUT", f"/intruder-{uuid.uuid4().hex[:8]}", None)):
        result = _request(port, path, method, data)
        leaks = (body,) if key in path else (body, key.encode())  # an error names the key it was asked for
        assert result[0] == 403 and _refused(result, *leaks), (method, path, result)
    assert _s3().get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    assert not _s3_has(intruder)


@pytest.mark.integration
def test_weed_runs_on_our_configuration_only(locked_home):
    home = locked_home
    pid = processes._service_pid(home, "s3")
    conf = seaweed.conf_dir(home)
    environ = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e)
    assert Path(f"/proc/{pid}/cwd").resolve() == conf and environ["HOME"] == str(conf)
    assert not [k for k in environ if k.startswith("WEED_")]
    assert f"-config_dir={conf}" in processes._cmdline(pid)
    assert conf.stat().st_mode & 0o777 == 0o700
    files = sorted(p.name for p in conf.iterdir())
    assert files == sorted(["security.toml", "ca.pem", "ca.key"] + [f"{c}.{e}" for c in seaweed.COMPONENTS
                                                                     for e in ("pem", "key")])
    assert all((conf / f).stat().st_mode & 0o077 == 0 for f in files)


# ---------------------------------------------------------------- restarts


def _restart_s3(home: Path) -> None:
    pid = processes._service_pid(home, "s3")
    assert pid is not None
    processes._stop_pid(pid, stack.STOP_GRACE_S["s3"])
    assert processes._service_pid(home, "s3") is None
    stack.up(home)


def _anonymous_refused(home: Path) -> None:
    ports = _ports(home)
    for name in HTTP_PORTS + GRPC_PORTS:
        result = _request(ports[name], "/", ctx=_ctx(home, "none", alpn=("h2", "http/1.1")))
        assert _tls_refused(result), (name, result)


@pytest.mark.integration
def test_restart_keeps_the_certificates_and_ignores_a_users_seaweed_config(locked_home, s3_prefix, tmp_path,
                                                                           monkeypatch):
    home = locked_home
    key, body = _put_probe(s3_prefix.removeprefix(f"s3://{BUCKET}/"))
    before = {p.name: p.read_bytes() for p in seaweed.conf_dir(home).iterdir() if p.suffix in {".pem", ".key"}}
    # What the user may have lying around: an open security.toml in ~/.seaweedfs and WEED_* variables
    (tmp_path / ".seaweedfs").mkdir()
    (tmp_path / ".seaweedfs" / "security.toml").write_text('[grpc]\nca = ""\n[https.master]\nkey = ""\n')
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WEED_GRPC_CA", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("WEED_HTTPS_MASTER_CA", str(tmp_path / "missing.pem"))
    _restart_s3(home)
    after = {p.name: p.read_bytes() for p in seaweed.conf_dir(home).iterdir() if p.suffix in {".pem", ".key"}}
    assert after == before
    _anonymous_refused(home)
    assert _s3().get_object(Bucket=BUCKET, Key=key)["Body"].read() == body


@pytest.mark.integration
def test_a_home_from_before_the_lock_gets_it_on_restart(locked_home, s3_prefix):
    home = locked_home
    key, body = _put_probe(s3_prefix.removeprefix(f"s3://{BUCKET}/"))
    old_ca = (seaweed.conf_dir(home) / "ca.pem").read_bytes()
    pid = processes._service_pid(home, "s3")
    processes._stop_pid(pid, stack.STOP_GRACE_S["s3"])
    # What an older version left: no weed folder, no weed signing keys
    for p in seaweed.conf_dir(home).iterdir():
        p.unlink()
    seaweed.conf_dir(home).rmdir()
    creds = json.loads((home / "credentials.json").read_text())
    state._write_private(home / "credentials.json",
                         json.dumps({k: v for k, v in creds.items() if not k.startswith("weed_")}))
    stack.up(home)
    assert (seaweed.conf_dir(home) / "ca.pem").read_bytes() != old_ca
    assert {k for k in state._credentials(home) if k.startswith("weed_")} == {
        "weed_jwt_write", "weed_jwt_read", "weed_filer_jwt_write", "weed_filer_jwt_read"}
    _anonymous_refused(home)
    assert _s3().get_object(Bucket=BUCKET, Key=key)["Body"].read() == body  # the data survived the upgrade


# ---------------------------------------------------------------- no server: the files and the fail-closed check


def test_configure_makes_private_certificates_once_and_reissues_foreign_ones(tmp_path):
    from cryptography import x509

    conf = seaweed.configure(tmp_path)
    assert conf.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in conf.iterdir())
    ca = x509.load_pem_x509_certificate((conf / "ca.pem").read_bytes())
    for component in seaweed.COMPONENTS:
        cert = x509.load_pem_x509_certificate((conf / f"{component}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in names.get_values_for_type(x509.DNSName)
    toml = tomllib.loads((conf / "security.toml").read_text())
    creds, ca_path = state._credentials(tmp_path), str(conf / "ca.pem")
    jwt = toml["jwt"]
    assert [jwt["signing"]["key"], jwt["signing"]["read"]["key"], jwt["filer_signing"]["key"],
            jwt["filer_signing"]["read"]["key"]] == [creds[k] for k in (
                "weed_jwt_write", "weed_jwt_read", "weed_filer_jwt_write", "weed_filer_jwt_read")]
    assert toml["grpc"]["ca"] == ca_path and toml["https"]["client"]["enabled"] is True
    for component in ("master", "volume", "filer", "s3"):
        assert toml["grpc"][component]["cert"] == str(conf / f"{component}.pem")
    for component in ("master", "volume", "filer"):  # a `ca` here is what makes weed ask for client certs
        assert toml["https"][component] == {"cert": str(conf / f"{component}.pem"),
                                            "key": str(conf / f"{component}.key"), "ca": ca_path} | (
            {"disable_tls_verify_client_cert": False} if component == "filer" else {})
    before = {p.name: p.read_bytes() for p in conf.iterdir()}
    seaweed.configure(tmp_path)
    assert {p.name: p.read_bytes() for p in conf.iterdir()} == before  # kept, not remade
    # A certificate from another CA (or a lost key) is reissued from the stack's CA; the rest is kept
    other = _other_ca(tmp_path)
    (conf / "filer.pem").write_bytes((other / "client.pem").read_bytes())
    (conf / "volume.key").unlink()
    seaweed.configure(tmp_path)
    x509.load_pem_x509_certificate((conf / "filer.pem").read_bytes()).verify_directly_issued_by(ca)
    changed = {p.name for p in conf.iterdir() if p.read_bytes() != before.get(p.name)}
    assert changed == {"filer.pem", "filer.key", "volume.pem", "volume.key"}


def test_weed_gets_no_seaweed_variables_and_its_own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("WEED_JWT_SIGNING_KEY", "known-to-everyone")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "credentials.json").write_text("{}")
    (tmp_path / "state.json").write_text(json.dumps({"ports": state.resolve_ports()}))
    env = services._service_env(tmp_path, "s3")
    assert not [k for k in env if k.startswith("WEED_")]
    assert env["HOME"] == str(seaweed.conf_dir(tmp_path)) == str(services._service_cwd(tmp_path, "s3"))


def test_check_locked_refuses_a_plain_port_and_a_tls_port_without_client_auth(tmp_path):
    seaweed.configure(tmp_path)
    conf = seaweed.conf_dir(tmp_path)
    server = r"""
import socket, ssl, sys
tls = sys.argv[1] == "tls"
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); print(s.getsockname()[1], flush=True)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
if tls:
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    ctx.set_alpn_protocols(["h2", "http/1.1"])
while True:
    c, _ = s.accept()
    try:
        c = ctx.wrap_socket(c, server_side=True) if tls else c
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    except OSError:
        pass
    c.close()
"""
    for kind, message in (("plain", "does not speak TLS"), ("tls", "accepts clients without a certificate")):
        proc = subprocess.Popen([sys.executable, "-c", server, kind, str(conf / "filer.pem"), str(conf / "filer.key")],
                                stdout=subprocess.PIPE, text=True)
        try:
            port = int(proc.stdout.readline())
            ports = {name: port for name in seaweed.LOCKED_PORTS}
            with pytest.raises(StackError, match=message):
                seaweed.check_locked(tmp_path, ports)
        finally:
            proc.kill()
            proc.wait()
