"""Connecting to Ray the same way everywhere: inside a Ray job, a cluster, or a local in-process Ray."""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (``ip:port`` or ``ray://``), else start Ray in-process.

    ``RAY_ADDRESS`` holding a dashboard URL (``http://...``, what job submission uses) is not a
    cluster address for ``ray.init``: then a local in-process Ray is started.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "")
    if address and not address.startswith(("http://", "https://")):
        ray.init(address=address, log_to_driver=False)
        return
    saved = os.environ.pop("RAY_ADDRESS", None)
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
