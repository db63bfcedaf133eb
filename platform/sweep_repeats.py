"""Repeats: a sweep trial trained once per value of `sweep.repeat` (splits or seeds), ranked by the mean.

The repeats of a trial run one after another in the trial's process, each a nested MLflow run under
the trial's run. Concurrent fits in threads would share the process-wide RNG that `seed_everything` resets,
so they could not be reproduced. Every repeat but the last reports nothing to Tune; during the last one
each epoch reports the mean over all repeats of the sweep metric at that epoch (the earlier repeats' curves
are read back from their MLflow runs), so ASHA, median stopping and Hyperband decide on the mean curve, but
only once the earlier repeats are trained. A repeat that stopped early counts with its last value. After
the repeats, the trial run carries `<metric>_mean` and `<metric>_std` of the repeats' best epochs (and of
their test metrics), which is what the sweep ranks trials by.

A trial that comes back (resumed or retried) keeps the repeats that finished and trains the others again:
the last one from its Tune checkpoint when it has one, the others from scratch in a new nested run (the
interrupted run is marked FAILED, so no curve is read twice).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from plexlab import schema, tracking, train
from plexlab.config import ExperimentConfig
from plexlab.errors import ConfigError
from plexlab.sweep_trial import CHECKPOINT_FILE, ReportToTune, TrialSpec, trial_folder
from ray import tune


@dataclass(frozen=True)
class Repeat:
    """One value of the repeated key, and its place among the trial's repeats."""

    key: str
    value: Any
    index: int

    @property
    def label(self) -> str:
        return f"{self.key}={self.value}"


def repeats(repeat: dict[str, list[Any]]) -> list[Repeat]:
    ((key, values),) = repeat.items()
    return [Repeat(key, value, i) for i, value in enumerate(values)]


def check(cfg: ExperimentConfig) -> None:
    """Before Ray starts: every repeated value makes a valid config, with a scheduler that can use them."""
    assert cfg.sweep is not None and cfg.sweep.repeat is not None
    for rep in repeats(cfg.sweep.repeat):
        try:
            cfg.with_overrides({rep.key: rep.value})
        except ConfigError as exc:
            raise ConfigError(cfg.source, f"sweep.repeat.{rep.key}", f"value {rep.value!r}: {exc}") from None
    if cfg.sweep.scheduler.name == "pbt":
        raise ConfigError(
            cfg.source,
            "sweep.repeat",
            "PBT cannot exploit repeats (it would copy the last repeat's weights only); use asha or fifo",
        )
    if cfg.sweep.resources.workers > 1:
        raise ConfigError(cfg.source, "sweep.repeat", "repeats train with one worker per trial (workers: 1)")


class _ReportMeanToTune(ReportToTune):
    """The last repeat's reports: the sweep metric replaced by its mean over all repeats at this epoch."""

    def __init__(self, every: int, metric: str, earlier: list[list[float]]) -> None:
        super().__init__(every)
        self.metric = metric
        self.earlier = earlier

    def epoch_metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        metrics = super().epoch_metrics(trainer)
        if self.metric not in metrics:
            return metrics
        # The index of this epoch's validation among the curve's values (one per validation epoch).
        every = max(1, int(trainer.check_val_every_n_epoch or 1))
        at = max(0, (trainer.current_epoch + 1) // every - 1)
        values = [curve[min(at, len(curve) - 1)] for curve in self.earlier if curve]
        metrics[self.metric] = statistics.fmean([*values, metrics[self.metric]])
        metrics[schema.REPEATS] = len(values) + 1
        return metrics


def run_repeats(cfg: ExperimentConfig, trial_run: tracking.Run, spec: TrialSpec, trial_id: str) -> None:
    """Train the trial's repeats in order into nested runs, reporting the mean curve during the last."""
    assert spec.repeat is not None
    reps = repeats(spec.repeat)
    trial_run.log_params({k: v for k, v in cfg.flat_params().items() if k != reps[0].key})
    earlier: list[list[float]] = []
    try:
        for rep in reps:
            last = rep.index == len(reps) - 1
            checkpoint = tune.get_checkpoint() if last else None
            run, finished = _repeat_run(cfg, trial_run, trial_id, rep, resume=checkpoint is not None)
            if finished:
                earlier.append(_curve(run, spec.metric))
                continue
            callbacks = [_ReportMeanToTune(spec.checkpoint_every, spec.metric, earlier)] if last else []
            hooks = train.TrainerHooks(callbacks=callbacks)
            workdir = trial_folder(spec.path, trial_id) / f"repeat-{rep.index}"
            rep_cfg = cfg.with_overrides({rep.key: rep.value})
            if checkpoint is None:
                train.fit(rep_cfg, run=run, hooks=hooks, workdir=workdir)
            else:
                with checkpoint.as_directory() as folder:
                    hooks.resume_from = str(Path(folder) / CHECKPOINT_FILE)
                    train.fit(rep_cfg, run=run, hooks=hooks, workdir=workdir)
            if not last:
                earlier.append(_curve(run, spec.metric))
    finally:  # also when the scheduler stops the trial (SystemExit) during its last repeat
        summarize_trial(trial_run, cfg.name, spec.metric)


def _repeat_run(
    cfg: ExperimentConfig, trial_run: tracking.Run, trial_id: str, rep: Repeat, *, resume: bool
) -> tuple[tracking.Run, bool]:
    """The repeat's nested run and whether it already finished. An unfinished one is continued when the
    repeat resumes from a checkpoint; otherwise it is marked FAILED and the repeat trains in a new run."""
    found = tracking.search(
        trial_run.uri, cfg.name, {schema.PARENT_RUN_ID: trial_run.run_id, schema.REPEAT: rep.label}
    )
    for record in found:  # newest first
        if record.status == "FAILED":
            continue
        run = tracking.Run.attach(trial_run.uri, record.run_id)
        if record.status == "FINISHED":
            return run, True
        if resume:
            run.reopen()
            return run, False
        run.set_tags({schema.ERROR: "interrupted before it finished; this repeat was trained again"})
        run.end("FAILED")
    tags = {
        **train.run_tags(cfg, kind=schema.REPEAT_KIND),
        schema.TRIAL_ID: trial_id,
        schema.REPEAT: rep.label,
    }
    name = f"{trial_id}-{rep.key.rsplit('.', 1)[-1]}{rep.value}"
    run = tracking.create_run(
        trial_run.uri, cfg.name, run_name=name, tags=tags, parent_run_id=trial_run.run_id
    )
    return run, False


def _curve(run: tracking.Run, metric: str) -> list[float]:
    """A finished repeat's metric, one value per validation epoch, in order."""
    return [value for _, value in sorted(run.history(metric), key=lambda pair: pair[0])]


def repeat_records(trial_run: tracking.Run, experiment: str) -> list[tracking.RunRecord]:
    """The trial's nested repeat runs (a retried repeat's FAILED run too)."""
    return tracking.search(trial_run.uri, experiment, {schema.PARENT_RUN_ID: trial_run.run_id})


def summarize_trial(trial_run: tracking.Run, experiment: str, metric: str) -> None:
    """`<metric>_mean` / `_std` of the repeats' best epochs, and of every test metric, on the trial's run."""
    kept = [r for r in repeat_records(trial_run, experiment) if r.status != "FAILED"]
    keys = {schema.best(metric): metric, **{k: k for r in kept for k in r.metrics if k.startswith("test/")}}
    summary: dict[str, float] = {}
    for key, name in keys.items():
        values = [r.metrics[key] for r in kept if key in r.metrics]
        if not values:
            continue
        summary[schema.mean(name)] = statistics.fmean(values)
        if len(values) > 1:
            summary[schema.std(name)] = statistics.stdev(values)
    if schema.mean(metric) in summary:
        summary[schema.REPEATS] = len([r for r in kept if schema.best(metric) in r.metrics])
    trial_run.log_metrics(summary)


def best_repeat_folder(
    trial_run: tracking.Run, experiment: str, repeat: dict[str, list[Any]], metric: str, mode: str
) -> str:
    """`repeat-<i>`, the folder of the trial's repeat with the best epoch ("" when none has one)."""
    index = {rep.label: rep.index for rep in repeats(repeat)}
    scored = [
        (r.metrics[schema.best(metric)], index[r.tags[schema.REPEAT]])
        for r in repeat_records(trial_run, experiment)
        if r.status != "FAILED" and schema.best(metric) in r.metrics and r.tags.get(schema.REPEAT) in index
    ]
    if not scored:
        return ""
    pick = max(scored) if mode == "max" else min(scored)
    return f"repeat-{pick[1]}"
