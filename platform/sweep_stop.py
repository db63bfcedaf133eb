"""Stopping a sweep so that it can be resumed: SIGTERM asks Tune to end the experiment as Ctrl-C does.

`plexlab stop` (Ray's stop_job), a notebook handle's `stop()` and cluster schedulers send the driver SIGTERM,
and Ray's job server sends SIGKILL after a grace period. By default SIGTERM ends Python at once: the parent
and trial runs stayed RUNNING and Tune's experiment state missed its last save. Here it triggers Tune's own
interrupt (the handler Tune puts on SIGUSR1 while it runs, the same as its SIGINT one; Ray's job drivers
block SIGINT): Tune stops the trials and saves the experiment, `Tuner.fit` returns, and the runs the stop cut
short are marked KILLED. `--resume` continues them from their last checkpoints, each in its own run.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

from plexlab import schema, sweep_runs, tracking
from plexlab.config import ExperimentConfig

log = logging.getLogger(__name__)

STOP_REASON = "stopped (SIGTERM); `plexlab sweep FILE --resume` continues it"
SETTLE_S = 20  # how long stopped trials get to end their own runs (Ray's job server allows 120 s in all)


class SweepStopped(KeyboardInterrupt):
    """The sweep was stopped by SIGTERM; Tune saved its experiment, and `--resume` continues it. A
    KeyboardInterrupt, so that the parent run ends KILLED (not FAILED) and the CLI says "interrupted"."""


@dataclass
class StopSignal:
    """Whether (and when, in seconds since the epoch) SIGTERM arrived while the Tuner ran."""

    at: float | None = None


@contextlib.contextmanager
def on_sigterm() -> Iterator[StopSignal]:
    """While the block runs (around `Tuner.fit`), SIGTERM stops the sweep through Tune's interrupt."""
    state = StopSignal()
    if threading.current_thread() is not threading.main_thread():
        yield state  # signal handlers can only be set from the main thread; SIGTERM keeps its default
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        state.at = state.at or time.time()
        tune_handler = signal.getsignal(signal.SIGUSR1)
        if not callable(tune_handler):  # Tune has not started its loop yet: nothing to save
            raise SweepStopped(STOP_REASON)
        log.warning("SIGTERM: stopping the sweep's trials and saving it for --resume")
        tune_handler(signal.SIGUSR1, frame)

    before = signal.signal(signal.SIGTERM, handler)
    usr1 = signal.getsignal(signal.SIGUSR1)
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGUSR1, usr1)  # Tune leaves its handler, bound to a finished run, behind


def raise_if_stopped(state: StopSignal, cfg: ExperimentConfig, parent: tracking.Run) -> None:
    """After `Tuner.fit` returned: if SIGTERM stopped it, mark the trial runs it cut short KILLED (a
    stopped trial ends its run FINISHED as if a scheduler had stopped it) and raise SweepStopped."""
    if state.at is None:
        return
    # Tune returns before its trials' actors have closed their runs: a run they end after this one marked
    # it would overwrite the mark, so let them end first.
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and any(
        c.status == "RUNNING" for c in sweep_runs.trial_runs(cfg, parent)
    ):
        time.sleep(0.5)
    for child in sweep_runs.trial_runs(cfg, parent):
        run = tracking.Run(parent.client, child.run_id, parent.uri)
        note = f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {STOP_REASON}"
        ended_by_stop = child.status == "FINISHED" and schema.STOPPED in child.tags
        # A trial torn down while it stopped may end FAILED; Tune retries it on --resume either way.
        if ended_by_stop or child.status == "FAILED":
            ended = parent.client.get_run(child.run_id).info.end_time or 0
            if ended < state.at * 1000:
                continue  # a scheduler's stop, or a failure, before the signal
            for tag in (schema.STOPPED, schema.ERROR):
                if tag in child.tags:
                    parent.client.delete_tag(child.run_id, tag)
            if schema.ERROR in child.tags:
                note += f" (it ended with {child.tags[schema.ERROR][:300]})"
        elif child.status != "RUNNING":
            continue
        run.set_tags({schema.INTERRUPTED: note})
        run.end("KILLED")
    raise SweepStopped(STOP_REASON)


def resuming(parent: tracking.Run) -> None:
    """A resumed sweep's parent no longer carries the error its stop left on it."""
    if STOP_REASON in parent.record().tags.get(schema.ERROR, ""):
        parent.client.delete_tag(parent.run_id, schema.ERROR)
