"""Lightning's MLFlowLogger for a plexlab run, writing metrics asynchronously through MLflow's own queue.

Training does not wait for the tracking store: each `log_batch(..., synchronous=False)` returns a
RunOperations future that is kept here. Every later logging call looks at the finished ones, so a write that
failed (a tracking server that died) stops the fit at the next logging step; a write the store has not
answered for `STALL_S` seconds does too (MLflow's own retries would otherwise wait for minutes). Pending
writes are waited for at every checkpoint and at the end of every `trainer.fit` / `trainer.test` (the logger's
`finalize`), so nothing logged is lost and the runner reads complete histories for its plots.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from mlflow.exceptions import MlflowException
from plexlab.datamodules.errors import first_line
from plexlab.tracking import redact

log = logging.getLogger(__name__)

STALL_S = 12.0  # a write unanswered this long is a failure: reported within 30 s of the server dying

# The queue logs every failed write at ERROR with the store's full message; plexlab reports the failure
# itself, in one line, through the fit's error.
logging.getLogger("mlflow.utils.async_logging.async_logging_queue").setLevel(logging.CRITICAL)


class PendingWrites:
    """The futures of the asynchronous writes not yet known to have succeeded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[concurrent.futures.Future, float]] = []

    def add(self, operations: Any) -> None:
        """Keep the futures of one RunOperations (MLflow keeps them in `_operation_futures`)."""
        now = time.monotonic()
        with self._lock:
            self._pending.extend((f, now) for f in getattr(operations, "_operation_futures", []))

    def __len__(self) -> int:
        return len(self._pending)

    def check(self) -> None:
        """Raise the first failure among the finished writes, or a stall; forget the ones that succeeded."""
        with self._lock:
            done = [(f, t) for f, t in self._pending if f.done()]
            self._pending = [(f, t) for f, t in self._pending if not f.done()]
            oldest = min((t for _, t in self._pending), default=None)
        for future, _ in done:
            _raise_failure(future)
        if oldest is not None and time.monotonic() - oldest > STALL_S:
            raise MlflowException(f"a metric write was not answered for {STALL_S:.0f} s")

    def flush(self, timeout: float = STALL_S) -> None:
        """Wait for every pending write (at most `timeout` seconds), then raise the first failure if any."""
        with self._lock:
            futures = [f for f, _ in self._pending]
        _, not_done = concurrent.futures.wait(futures, timeout=timeout)
        if not_done:
            raise MlflowException(f"{len(not_done)} metric writes were not answered for {timeout:.0f} s")
        self.check()


def _raise_failure(future: concurrent.futures.Future) -> None:
    error = future.exception()
    if error is not None:
        raise MlflowException(f"a metric write failed: {first_line(error, 300)}") from error


class _RecordingClient:
    """The logger's MlflowClient, keeping the futures its asynchronous `log_batch` calls return."""

    def __init__(self, client: Any, pending: PendingWrites) -> None:
        self._client = client
        self._pending = pending

    def log_batch(self, *args: Any, **kwargs: Any) -> Any:
        operations = self._client.log_batch(*args, **kwargs)
        if operations is not None:
            self._pending.add(operations)
        return operations

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class RunLogger(MLFlowLogger):
    """Metrics only, asynchronous; the runner logs params, and `tracking.ending` ends the run."""

    def __init__(self, run_id: str, uri: str, experiment_name: str) -> None:
        super().__init__(experiment_name=experiment_name, tracking_uri=uri, run_id=run_id, synchronous=False)
        self.pending = PendingWrites()
        self._mlflow_client = _RecordingClient(self._mlflow_client, self.pending)

    def log_hyperparams(self, params: Any) -> None:
        pass  # the runner logs the resolved config, with defaults and data-derived sizes, once

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self.pending.check()
        super().log_metrics(metrics, step)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        self.pending.flush()

    def finalize(self, status: str = "success") -> None:
        # Not Lightning's set_terminated: the run continues into the test and ends in tracking.ending.
        if status == "success":
            self.pending.flush()
            return
        try:  # an exception (or a scheduler's stop) is on its way out: keep what can be kept, briefly
            self.pending.flush(timeout=2.0)
        except MlflowException as exc:
            log.warning("metrics not written before the failure: %s", first_line(exc, 300))


def make(run_id: str, uri: str, experiment_name: str) -> RunLogger:
    """An MLFlowLogger writing metrics into an existing run, asynchronously (see the module docstring)."""
    return RunLogger(run_id, uri, experiment_name)


def flush_loggers(trainer: Any) -> None:
    """Wait for the trainer's pending metric writes (before a checkpoint that a trial may resume from)."""
    for logger in trainer.loggers:
        if isinstance(logger, RunLogger):
            logger.pending.flush()


def flush_store(uri: str, timeout: float = STALL_S) -> None:
    """Wait (at most `timeout` s) for everything queued for the store at `uri`, whoever queued it."""
    from mlflow.tracking import MlflowClient

    store = MlflowClient(uri)._tracking_client.store  # MLflow caches one store, and its queue, per URI
    worker = threading.Thread(target=store.flush_async_logging, daemon=True, name="plexlab-flush")
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        log.warning("MLflow at %s has not taken the queued metrics after %.0f s", redact(uri), timeout)
