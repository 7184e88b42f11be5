"""The one place that connects to Ray: inside a Ray job, to a cluster, or to a local in-process Ray.

    with cluster.connect():                      # RAY_ADDRESS's cluster, else a local Ray
        trainer.fit()
    worker_env()                                 # the settings Ray Train workers get from the driver

``RAY_ADDRESS`` may be a cluster (GCS) address (``host:port``, ``ray://...``; inside a Ray job Ray sets
it so), or the HTTP Jobs API address of the local stack (what ``radimagenet stack env`` exports):
then the head's GCS port is read from the stack's ``$RADIMAGENET_HOME/state.json``. Unset, a local
Ray is started in this process.

Credentials (``CREDENTIAL_ENV``) never travel in a runtime env unless the job was submitted with
``--ship-credentials`` (``SHIP_FLAG`` set): Ray shows a runtime env to anyone holding the cluster token.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from urllib.parse import urlparse

from radimagenet.errors import ConfigError

#: Secrets: a job gets them only with ``--ship-credentials``; never in entrypoint, metadata or output.
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                  "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                  "RADIMAGENET_DEID_SECRET")
#: Set in a job's env when credentials were shipped: its Ray Train workers receive them as well.
SHIP_FLAG = "RADIMAGENET_SHIP_CREDENTIALS"
#: The driver's variables with these prefixes are given to Ray Train workers (see ``worker_env``).
FORWARDED_ENV_PREFIXES = ("AWS_", "MLFLOW_", "RADIMAGENET_")
#: Settings of the driver's own machine, never given to workers (each node has its own).
NODE_LOCAL_ENV = ("RADIMAGENET_HOME",)


def _loopback(value: str) -> bool:
    """Whether ``value`` is a URL of this machine's loopback (``http://127.0.0.1:8333``, ``localhost``)."""
    host = urlparse(value).hostname if "://" in value else None
    return host is not None and (host == "localhost" or host.startswith("127.") or host == "::1")


def worker_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Settings the training workers get from the driver. Credentials are left out: Ray shows a
    runtime env to anyone holding the cluster token, and workers inherit them from their node's
    environment anyway; only a job submitted with ``--ship-credentials`` passes them on. Settings that
    name the driver's machine (``NODE_LOCAL_ENV``, loopback addresses) are left out too: on another node
    they would point at that node, whose own environment has the right ones."""
    env = os.environ if environ is None else environ
    ship = env.get(SHIP_FLAG) == "1"
    return {k: v for k, v in env.items()
            if k.startswith(FORWARDED_ENV_PREFIXES) and (ship or k not in CREDENTIAL_ENV)
            and k not in NODE_LOCAL_ENV and not _loopback(v)}


def ray_address() -> str | None:
    """The GCS address for ``ray.init``: ``RAY_ADDRESS`` when it is one; when it is the HTTP (Jobs API)
    address of the local stack, the head's port from ``$RADIMAGENET_HOME/state.json``; None (start a
    local Ray) when unset. Inside a Ray job, Ray sets ``RAY_ADDRESS`` to the GCS address itself."""
    address = os.environ.get("RAY_ADDRESS", "")
    if not address.startswith(("http://", "https://")):
        return address or None
    state = os.path.join(os.environ.get("RADIMAGENET_HOME", ".radimagenet"), "state.json")
    try:
        with open(state) as f:
            port = json.load(f)["ports"]["ray"]
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"RAY_ADDRESS={address} is a Jobs API address, not a Ray cluster (GCS) address: submit with "
            f"`radimagenet submit -- radimagenet pretrain ...`, or set RAY_ADDRESS=HOST:PORT of the head"
        ) from exc
    return f"{urlparse(address).hostname}:{port}"


@contextlib.contextmanager
def connect(num_cpus: int | None = None, *, log_to_driver: bool = True,
            include_dashboard: bool | None = None, stack_head: bool = True) -> Iterator[None]:
    """Connected to Ray for the ``with`` block: the cluster of ``ray_address()``, else a local Ray
    (``num_cpus``: its size; ``include_dashboard``: Ray's default when None). Nothing is done when Ray
    is already initialised; a connection made here is shut down on exit (the cluster may go away later).
    ``log_to_driver`` streams the tasks' and workers' output to this process. ``stack_head=False``: when
    ``RAY_ADDRESS`` is only the local stack's Jobs API address, start a local Ray of ``num_cpus`` instead
    of joining the stack's head (what ``radimagenet ingest --workers N`` does outside a Ray job)."""
    import ray

    if ray.is_initialized():
        yield
        return
    jobs_api = os.environ.get("RAY_ADDRESS", "").startswith(("http://", "https://"))
    address = None if jobs_api and not stack_head else ray_address()
    if address:
        # also given to Ray's own helper actors: several clusters may share a host
        ray.init(address=address, log_to_driver=log_to_driver, runtime_env={"env_vars": {"RAY_ADDRESS": address}})
    else:
        saved = os.environ.pop("RAY_ADDRESS", None)  # an empty RAY_ADDRESS is not an address to Ray either
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=include_dashboard, log_to_driver=log_to_driver)
        finally:
            if saved is not None:
                os.environ["RAY_ADDRESS"] = saved
    try:
        yield
    finally:
        ray.shutdown()
