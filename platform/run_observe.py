"""Around every tracked fit (a plain fit, a sweep trial, a repeat, rank 0 of a DDP trial): the environment
recorded once when it starts, system metrics sampled while it runs, and every queued metric written out
before the run ends (see run_environment, system_metrics, run_logger)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from plexlab import run_environment, run_logger, system_metrics
from plexlab.datamodules.errors import first_line

log = logging.getLogger(__name__)


@contextlib.contextmanager
def observing(run: Any, cfg: Any) -> Iterator[None]:
    """`run`: a tracking.Run, or None (nothing recorded: the block runs as it is); `cfg`: its config."""
    if run is None:
        yield
        return
    seconds = run_environment.log(run, cfg)
    log.debug("environment recorded in %.2f s", seconds)
    settings = cfg.tracking
    monitor = (
        system_metrics.start(run.run_id, run.uri, settings.system_metrics_interval)
        if settings.system_metrics
        else None
    )
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        # Short waits after a failure: the failure, not the tracking store's retries, is what to report.
        if monitor is not None:
            monitor.stop(3.0 if failed else system_metrics.JOIN_S)
        try:
            # The fit's own logger waited for its writes at its end; this also covers a fit cut short.
            run_logger.flush_store(run.uri, timeout=1.0 if failed else run_logger.STALL_S)
        except Exception as exc:  # best effort on the way out
            log.warning("queued metrics not written: %s", first_line(exc, 300))
