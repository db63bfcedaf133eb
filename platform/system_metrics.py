"""System metrics of a run: MLflow's own monitor (CPU, memory, disk, network; GPU use and memory when pynvml
is installed, else skipped) sampling into a client-created run as `system/*` metrics.

MLflow's monitor publishes an aggregate only after a full interval and drops the samples of the last,
unfinished one when it stops; here the last partial interval is published too, so a run shorter than the
interval still records its use.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from plexlab import tracking
from plexlab.datamodules.errors import first_line

log = logging.getLogger(__name__)

JOIN_S = 15.0  # how long stopping waits for the sampling thread (it may be in a call to a dying server)


class Monitor:
    """Samples the machine every `interval` seconds into the run `run_id` until `stop`."""

    def __init__(self, run_id: str, uri: str, interval: float) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # Its "no GPU monitor" notices are INFO/WARNING lines on every run of a CPU machine.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
        self._monitor: Any = SystemMetricsMonitor(
            run_id, sampling_interval=interval, resume_logging=True, tracking_uri=uri
        )

    def start(self) -> None:
        self._monitor.start()

    def stop(self, wait: float = JOIN_S) -> None:
        """Stop sampling; publish what the unfinished interval collected; write everything out. `wait`: how
        long to wait for the sampling thread (less when the run failed: its server may be gone)."""
        monitor = self._monitor
        thread = monitor._process
        if thread is None:
            return
        monitor._shutdown_event.set()
        thread.join(wait)
        quick = tracking.one_quick_try() if wait < JOIN_S else contextlib.nullcontext()
        try:
            with quick:  # after a failure: the machine's last samples, if the store takes them at once
                if any(m._metrics for m in monitor.monitors):
                    monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
        except Exception as exc:  # best effort: a tracking failure is reported by the fit itself
            log.warning("system metrics not written: %s", first_line(exc, 300))
        monitor._process = None


def start(run_id: str, uri: str, interval: float) -> Monitor | None:
    """A started monitor, or None where MLflow's monitor cannot run here (psutil missing)."""
    try:
        monitor = Monitor(run_id, uri, interval)
    except ImportError as exc:
        log.warning("no system metrics: %s", first_line(exc, 200))
        return None
    monitor.start()
    return monitor
