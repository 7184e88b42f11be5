"""MLflow system metrics of a training run (CPU, memory, disk, network; GPU when ``nvidia-ml-py`` finds
one), sampled in a background thread of the process that trains and logged to the run by id.

    with system_metrics(uri, run_id, interval=10):    # system/cpu_utilization_percentage, ...
        train()

Owned by :mod:`radimagenet.io.tracking` (with :mod:`radimagenet.io.pyfunc`, the only ``mlflow``
importers). A resumed run continues the steps it logged before; a monitor that cannot start or log
costs the metrics, never the run.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

PREFIX = "system/"


@contextlib.contextmanager
def system_metrics(uri: str, run_id: str, interval: float = 10.0) -> Iterator[None]:
    """Sample system metrics every ``interval`` seconds while the block runs (``interval <= 0`` or no
    ``run_id``: nothing); one last sample is logged when it ends, so a short run has at least one."""
    if interval <= 0 or not run_id:
        yield
        return
    monitor = None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no "started monitoring" lines
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=True, tracking_uri=uri)
        monitor.start()
    except Exception as exc:  # noqa: BLE001 - metrics are optional; the run is not
        warnings.warn(f"MLflow system metrics are off for run {run_id}: {exc}", stacklevel=2)
        monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            _stop(monitor)


def _stop(monitor: object) -> None:
    """Stop the sampling thread, then log one final sample (the thread logs nothing before its first
    full interval) and flush."""
    try:
        monitor.finish()  # type: ignore[attr-defined]
        monitor.collect_metrics()  # type: ignore[attr-defined]
        monitor.publish_metrics(monitor.aggregate_metrics())  # type: ignore[attr-defined]
        monitor.mlflow_logger.flush()  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"MLflow system metrics: the last sample was not logged: {exc}", stacklevel=2)
