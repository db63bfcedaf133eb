"""A concise live view of a sweep: one row per trial (status, epoch, metric, best so far, error) in place of
Ray Tune's own tables.

On a terminal the table is redrawn in place (rich's Live); elsewhere (a pipe, a log file, CI) each trial event
prints one line: started, finished, stopped early, retried, errored. `quiet_tune()` keeps Tune's own output
and its per-trial tracebacks out of the way meanwhile; `verbose` sweeps keep Tune's output instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plexlab import environment_vars
from ray import tune
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

# Tune's legacy engine is silent at verbose=0; the new one still prints an experiment box. Tune's traceback
# log of a failed trial is left to the error file this view names.
QUIET_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}
# ...and, unless the user set it, the three-line warning about frequent experiment snapshots (short trials
# checkpoint often; the user can do nothing about it).
QUIET_DEFAULTS = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
QUIET_LOGGERS = ("ray.tune", "ray.train")
TUNE_VERBOSE = 1  # `--verbose`: what plexlab printed before this view (2 adds a box per epoch)
REDRAW_EVERY_S = 0.25  # results can arrive many times a second; a terminal needs no more

# Tune's statuses, as a person reads them (a finished trial is FINISHED or STOPPED, see TrialRow.status).
STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "ERROR": "error"}


@dataclass
class TrialRow:
    """What the view knows of one trial: its parameters, its last epoch and metric, and its best so far."""

    trial: str
    params: str = ""
    status: str = "pending"
    epoch: int | None = None
    value: float | None = None
    best: float | None = None
    error: str = ""


def one_line_error(text: str | None) -> str:
    """The last line of a traceback (`ValueError: ...`), which names what went wrong."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "the trial failed"


def trial_error(trial: Any) -> str:
    """A failed trial's error in one line. Tune has written its traceback to the local error file by the
    time it calls back; the copy in storage (`get_error`) comes only with the next sync."""
    text = None
    with contextlib.suppress(OSError, TypeError):
        text = Path(trial.error_file).read_text()
    return one_line_error(text or trial.get_error())


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class SweepView(tune.Callback):
    """A Tune callback that shows the sweep as one table of trials (a terminal) or one line per trial event.

    Args:
        name: the sweep's name, shown in the header.
        metric: what trials are ranked by (the sweep's objective).
        mode: `max` or `min`.
        num_trials: the planned number of trials, if known.
        max_epochs: the epochs a trial trains for, if known (a trial that ends sooner was stopped early).
        console: where to draw (default: stderr); its `is_terminal` picks the live table or the lines.
    """

    def __init__(
        self,
        name: str,
        metric: str,
        mode: str,
        *,
        num_trials: int | None = None,
        max_epochs: int | None = None,
        console: Console | None = None,
    ) -> None:
        self.name, self.metric, self.mode = name, metric, mode
        self.num_trials, self.max_epochs = num_trials, max_epochs
        self._console = console
        self._reset()

    def _reset(self) -> None:
        self.rows: dict[str, TrialRow] = {}
        self._live: Live | None = None
        self._started = time.monotonic()
        self._drawn = 0.0

    # Tune pickles the run config (callbacks included) with the sweep for --resume: keep only the settings.
    def __getstate__(self) -> dict[str, Any]:
        keep = ("name", "metric", "mode", "num_trials", "max_epochs")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._console = None
        self._reset()

    @property
    def console(self) -> Console:
        """The console drawn on (stderr unless one was given)."""
        if self._console is None:
            self._console = Console(stderr=True)
        return self._console

    # ---- what the view shows

    def _better(self, a: float, b: float | None) -> bool:
        return b is None or (a > b if self.mode == "max" else a < b)

    def best(self) -> TrialRow | None:
        """The trial with the best value of the metric so far (over every trial's reported epochs)."""
        found: TrialRow | None = None
        for row in self.rows.values():
            if row.best is not None and (found is None or self._better(row.best, found.best)):
                found = row
        return found

    def header(self) -> str:
        """One line: trials done, running and errored, and the sweep's best trial so far."""
        rows = list(self.rows.values())
        done = sum(r.status in ("finished", "stopped", "error") for r in rows)
        planned = self.num_trials if self.num_trials is not None else len(rows)
        parts = [f"sweep {self.name}: {done}/{planned} trials done"]
        running = sum(r.status == "running" for r in rows)
        errored = sum(r.status == "error" for r in rows)
        parts += [f"{running} running"] if running else []
        parts += [f"{errored} errored"] if errored else []
        best = self.best()
        where = (
            f"best {self.metric} {_fmt(best.best)} (trial {best.trial})" if best else f"no {self.metric} yet"
        )
        return ", ".join(parts) + f"; {where}; {time.monotonic() - self._started:.0f} s"

    def _epoch(self, row: TrialRow) -> str:
        if row.epoch is None:
            return ""
        return f"{row.epoch}/{self.max_epochs}" if self.max_epochs else str(row.epoch)

    def table(self) -> Table:
        """The trials as one rich table."""
        table = Table()
        for column in ("trial", "status", "epoch", self.metric, "best so far", "error", "params"):
            table.add_column(column, overflow="fold")
        for row in self.rows.values():
            cells = (row.trial, row.status, self._epoch(row), _fmt(row.value), _fmt(row.best), row.error)
            table.add_row(*cells, row.params)
        return table

    def render(self) -> Group:
        """What a terminal shows: the header line above the table."""
        return Group(Text(self.header(), style="bold"), self.table())

    # ---- drawing

    def _line(self, row: TrialRow, event: str) -> None:
        """A trial event: one line on a pipe; on a terminal, a redraw of the table."""
        if self.console.is_terminal:
            self._draw(force=True)
            return
        text = f"[{time.monotonic() - self._started:5.0f} s] trial {row.trial} {event}"
        self.console.print(Text(text), soft_wrap=True, highlight=False)

    def _draw(self, force: bool = False) -> None:
        if not self.console.is_terminal:
            return
        now = time.monotonic()
        if not force and now - self._drawn < REDRAW_EVERY_S:
            return
        self._drawn = now
        if self._live is None:
            self._live = Live(self.render(), console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(self.render(), refresh=True)

    def close(self) -> None:
        """Stop redrawing; the last table stays on the terminal."""
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.stop()
            self._live = None

    # ---- Tune's events

    def _row(self, trial: Any) -> TrialRow:
        row = self.rows.get(trial.trial_id)
        if row is None:
            params = " ".join(f"{k}={_fmt(v)}" for k, v in _flat(dict(trial.config or {})).items())
            row = self.rows[trial.trial_id] = TrialRow(trial=trial.trial_id, params=params)
        return row

    def _sync(self, trials: list[Any]) -> None:
        """Trials Tune knows of but has not started yet are shown as pending."""
        for trial in trials:
            row = self._row(trial)
            if row.status == "pending" and trial.status in STATUS:
                row.status = STATUS[trial.status]

    def _result_line(self, row: TrialRow) -> str:
        epoch = f"epoch {self._epoch(row)}, " if row.epoch is not None else ""
        if row.value is None:
            return epoch.rstrip(", ") or "no epochs reported"
        return f"{epoch}{self.metric} {_fmt(row.value)} (best {_fmt(row.best)})"

    def setup(self, **info: Any) -> None:
        self._started = time.monotonic()
        total = info.get("total_num_samples")
        if isinstance(total, int) and 0 < total < 10**9:
            self.num_trials = total

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._sync(trials)
        row = self._row(trial)
        again = row.status == "retrying"
        row.status, row.error = "running", ""  # a retry starts clean
        event = "restarted" if again else "started"
        self._line(row, f"{event}: {row.params}" if row.params else event)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._row(trial)
        row.status = "running"
        epoch = _number(result.get("epoch"))
        row.epoch = int(epoch) + 1 if epoch is not None else result.get("training_iteration")
        value = _number(result.get(self.metric))
        if value is not None:
            row.value = value
            if self._better(value, row.best):
                row.best = value
        self._draw()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        early = self.max_epochs is not None and row.epoch is not None and row.epoch < self.max_epochs
        row.status = "stopped" if early else "finished"
        event = "stopped early" if early else "finished"
        self._line(row, f"{event}: {self._result_line(row)}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row.status, row.error = "retrying", trial_error(trial)
        self._line(row, f"failed, retrying ({trial.num_failures} failures so far): {row.error}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row.status, row.error = "error", trial_error(trial)
        where = f" (traceback: {trial.error_file})" if trial.error_file else ""
        at = f"at {self._result_line(row)}" if row.epoch is not None else "before its first epoch"
        self._line(row, f"errored {at}: {row.error}{where}")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._sync(trials)
        self.close()


def view_for(name: str, metric: str, mode: str, num_trials: int | None, trainer: dict[str, Any]) -> SweepView:
    """The view of a sweep whose trials train with `trainer` (the experiment file's trainer section)."""
    epochs = trainer.get("max_epochs")
    return SweepView(
        name, metric, mode, num_trials=num_trials, max_epochs=epochs if isinstance(epochs, int) else None
    )


def run_config_args(view: SweepView | None) -> dict[str, Any]:
    """RunConfig's output settings: the view and a silent Tune, or (no view) Tune's own tables."""
    return {"verbose": TUNE_VERBOSE} if view is None else {"verbose": 0, "callbacks": [view]}


def replace_on_restore(tuner: tune.Tuner, view: SweepView | None) -> None:
    """A restored Tuner brings back the run config it was saved with (its view and verbosity); use this
    run's instead, so that `--resume --verbose` (or a sweep begun verbose) shows what was asked for."""
    internal = getattr(tuner, "_local_tuner", None)  # None under Ray Client, which keeps its saved output
    if internal is None:
        return
    run_config = internal.get_run_config()
    kept = [c for c in run_config.callbacks or [] if not isinstance(c, SweepView)]
    settings = run_config_args(view)
    run_config.verbose = settings["verbose"]
    run_config.callbacks = kept + settings.get("callbacks", [])


@contextlib.contextmanager
def quiet_tune(enabled: bool = True) -> Iterator[None]:
    """While a sweep runs under the view: Tune's engine silent, its INFO lines and trial tracebacks off."""
    if not enabled:
        yield
        return
    values = {**{k: os.environ.get(k, v) for k, v in QUIET_DEFAULTS.items()}, **QUIET_ENV}
    before_levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with environment_vars.temporarily(values):
            yield
    finally:
        for name, level in before_levels.items():
            logging.getLogger(name).setLevel(level)
