"""Logs as run artifacts: a sweep trial's output as `logs/trial.log` in its child run, the sweep driver's log
as `logs/driver.log` in the parent run.

A trial's file gets its Python logging (plexlab at INFO, Lightning, Ray), its stdout and stderr, and the full
traceback when it fails; it is appended to, so a trial retried after a crash keeps the crash in its log. The
driver's file gets the driver's Python logging only (its terminal output is the sweep's live view). Both are
uploaded when the block ends, however it ends; an upload that fails is one warning line, never the error.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from plexlab.datamodules.errors import first_line

log = logging.getLogger(__name__)

FOLDER = "logs"
TRIAL_LOG = "trial.log"
DRIVER_LOG = "driver.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that do not pass their records up to the root logger: a handler goes on each of them too.
OWN_HANDLERS = ("lightning.pytorch", "lightning.fabric", "ray")


class _Tee:
    """A text stream that writes to the original stream and to the log file."""

    def __init__(self, stream: Any, copy: IO[str]) -> None:
        self._stream = stream
        self._copy = copy

    def write(self, text: str) -> int:
        with contextlib.suppress(ValueError):  # the copy closed while a thread still prints
            self._copy.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        with contextlib.suppress(ValueError):
            self._copy.flush()
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _captured(path: Path, *, streams: bool) -> Iterator[IO[str]]:
    """Python logging (and with `streams`, stdout and stderr) copied into `path` for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = path.open("a", encoding="utf-8", buffering=1)
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    targets = [root] + [logging.getLogger(n) for n in OWN_HANDLERS if not logging.getLogger(n).propagate]
    # Without handlers of its own, the root logger's warnings reach stderr through logging's last resort,
    # which a handler added here would silence: keep them on (the real) stderr.
    console = None if root.handlers else logging.StreamHandler(sys.stderr)
    if console is not None:
        console.setLevel(logging.WARNING)
        root.addHandler(console)
    for target in targets:
        target.addHandler(handler)
    ours = logging.getLogger("plexlab")
    level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    saved = sys.stdout, sys.stderr
    if streams:
        sys.stdout, sys.stderr = _Tee(sys.stdout, out), _Tee(sys.stderr, out)
    try:
        yield out
    finally:
        if streams:
            sys.stdout, sys.stderr = saved
        ours.setLevel(level)
        for target in targets:
            target.removeHandler(handler)
        if console is not None:
            root.removeHandler(console)
        out.close()


def _record_end(out: IO[str], exc: BaseException | None) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    if exc is None:
        out.write(f"{when} plexlab: finished\n")
    elif isinstance(exc, SystemExit):
        out.write(f"{when} plexlab: stopped ({type(exc).__name__})\n")
    else:
        out.write(f"{when} plexlab: failed:\n")
        out.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def _upload(run: Any, path: Path) -> None:
    try:
        run.log_artifact(path, FOLDER)
    except Exception as exc:  # the block's own outcome (or error) is what matters
        log.warning("could not upload %s to the MLflow run: %s", path.name, first_line(exc, 300))


@contextlib.contextmanager
def _logged(run: Any, path: Path, *, streams: bool, header: str | None = None) -> Iterator[Path]:
    """The block's output into `path`, ended with how the block ended, uploaded into `run` in any case."""
    failure: BaseException | None = None
    try:
        with _captured(path, streams=streams) as out:
            if header:
                out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} plexlab: {header}\n")
            try:
                yield path
            except BaseException as exc:
                failure = exc
                raise
            finally:
                _record_end(out, failure)
    finally:
        _upload(run, path)


@contextlib.contextmanager
def trial_log(run: Any, folder: Path) -> Iterator[Path]:
    """A trial's output into `folder/trial.log`, uploaded into `run` (a tracking.Run) as `logs/trial.log`."""
    with _logged(run, folder / TRIAL_LOG, streams=True, header=f"trial starts in run {run.run_id}") as path:
        yield path


@contextlib.contextmanager
def driver_log(run: Any) -> Iterator[Path]:
    """The sweep driver's logging into a private temporary file, uploaded into the parent run as
    `logs/driver.log` (a resumed sweep's upload replaces the earlier one with this driver's log)."""
    folder = Path(tempfile.mkdtemp(prefix="plexlab-driver-"))
    try:
        with _logged(run, folder / DRIVER_LOG, streams=False) as path:
            yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)
