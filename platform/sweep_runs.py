"""A sweep's MLflow bookkeeping: the parent run, the safety net that closes its trials' child runs, and the
summary (best trial by its best epoch, results table, plot and best config on the parent run)."""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from plexlab import plots, schema, sweep_plots, sweep_repeats, tracking, train
from plexlab.config import ExperimentConfig, flatten, load
from plexlab.errors import ConfigError
from plexlab.sweep_trial import CHECKPOINT_FILE, trial_folder


@dataclass
class SweepResult:
    """The outcome of a sweep: the best trial's config, metric and checkpoint, and where it is recorded."""

    best_config: dict[str, Any]
    best_metric: float | None
    metric: str
    mode: str
    best_checkpoint: Path | None
    parent_run_id: str
    tracking_uri: str
    path: str  # the Tune experiment folder (what --resume restores)
    trials: list[dict[str, Any]]


def parent_run(cfg: ExperimentConfig, name: str, uri: str, resume: bool) -> tracking.Run:
    """The sweep's parent run: found again on --resume, else created with the sweep file and its space."""
    if resume:
        found = find_parent(cfg, name, uri)
        if found is not None:
            found.reopen()
            return found
    tags = {**train.run_tags(cfg, kind=schema.SWEEP_KIND), schema.SWEEP: name}
    parent = tracking.create_run(uri, cfg.name, run_name=f"sweep-{name}", tags=tags)
    parent.log_params({**cfg.flat_params(), **flatten({"sweep": cfg.public_dict()["sweep"]})})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sweep.yaml").write_text(yaml.safe_dump(cfg.public_dict(), sort_keys=False))
        assert cfg.sweep is not None
        (Path(tmp) / "search_space.json").write_text(json.dumps(cfg.sweep.space, indent=2))
        parent.log_artifact(Path(tmp))
    return parent


def find_parent(cfg: ExperimentConfig, name: str, uri: str) -> tracking.Run | None:
    return tracking.find_run(uri, cfg.name, {schema.SWEEP: name, schema.KIND: schema.SWEEP_KIND})


def trial_runs(cfg: ExperimentConfig, parent: tracking.Run) -> list[tracking.RunRecord]:
    """The parent's child runs, one per trial."""
    return tracking.search(parent.uri, cfg.name, {schema.PARENT_RUN_ID: parent.run_id})


def close_trial_runs(
    cfg: ExperimentConfig, parent: tracking.Run, grid: Any, metric: str, mode: str, path: str
) -> None:
    """The safety net: a trial whose process was torn down before it closed its run (Tune does not wait
    long for a stopped trial) gets its best checkpoint from its folder and its status from Tune's verdict,
    so no child run stays RUNNING, and a trial stopped by the scheduler is not left FAILED by Lightning."""
    succeeded = {r.metrics.get("trial_id") for r in grid if not r.error and r.metrics}
    for child in trial_runs(cfg, parent):
        trial = child.tags.get(schema.TRIAL_ID)
        run = tracking.Run(parent.client, child.run_id, parent.uri)
        best = trial_folder(path, trial) / "checkpoints" / "best.ckpt"
        if best.exists() and not run.has_artifacts("checkpoints"):
            run.log_artifact(best, "checkpoints")
        history = [value for _, value in run.history(metric)]
        if history and schema.best(metric) not in child.metrics:
            run.log_metrics({schema.best(metric): max(history) if mode == "max" else min(history)})
        if cfg.sweep is not None and cfg.sweep.repeat is not None:
            _close_repeat_runs(cfg, run, trial in succeeded)
            if schema.mean(metric) not in child.metrics:
                sweep_repeats.summarize_trial(run, cfg.name, metric)
        unexplained_failure = child.status == "FAILED" and schema.ERROR not in child.tags
        if child.status != "RUNNING" and not unexplained_failure:
            continue
        if trial not in succeeded:
            run.set_tags({schema.ERROR: "the trial failed; see Tune's error file for it"})
            run.end("FAILED")
        else:
            run.set_tags({schema.STOPPED: "stopped early by the scheduler"})
            run.end("FINISHED")


def _close_repeat_runs(cfg: ExperimentConfig, trial_run: tracking.Run, succeeded: bool) -> None:
    """A torn-down trial's repeat runs left RUNNING get the trial's verdict, like the trial's own run."""
    for record in sweep_repeats.repeat_records(trial_run, cfg.name):
        if record.status != "RUNNING":
            continue
        run = tracking.Run.attach(trial_run.uri, record.run_id)
        if succeeded:
            run.set_tags({schema.STOPPED: "stopped early by the scheduler"})
            run.end("FINISHED")
        else:
            run.set_tags({schema.ERROR: "the trial failed; see Tune's error file for it"})
            run.end("FAILED")


def summarize(
    cfg: ExperimentConfig,
    grid: Any,
    parent: tracking.Run,
    metric: str,
    mode: str,
    path: str,
    where: dict[str, str] | None = None,
) -> SweepResult:
    """Best trial by its best epoch (a repeated one by its mean); results table, plot and best config logged
    to the parent run. `where`: the Tune folder of each trial of an extended sweep (default: `path`)."""
    assert cfg.sweep is not None
    rows = [_trial_row(result, metric, mode) for result in grid]
    if cfg.sweep.repeat is not None:
        _score_by_repeat_mean(cfg, parent, rows, metric)
    scored = [r for r in rows if r[metric] is not None]
    if not scored:
        raise ConfigError(cfg.source, "sweep", f"no trial reported {metric}; see the trials' errors above")
    top = max(scored, key=lambda r: r[metric]) if mode == "max" else min(scored, key=lambda r: r[metric])
    best_result = next(r for r in grid if r.metrics.get("trial_id") == top["trial"])
    best_config = load(cfg.to_dict(), {k: top[k] for k in flatten(best_result.config or {})}).public_dict()
    # The runner's best-epoch checkpoint when the trial folder is reachable; else Tune's best reported one.
    trial_path = (where or {}).get(top["trial"], path)
    local_best = trial_folder(trial_path, top["trial"]) / _best_repeat(
        cfg, parent, top["trial"], metric, mode
    )
    local_best = local_best / "checkpoints" / "best.ckpt"
    best_checkpoint: Path | None = local_best if local_best.exists() else None
    if best_checkpoint is None and best_result.best_checkpoints:  # multi-worker trials report none to Tune
        tune_best = best_result.get_best_checkpoint(metric, mode)
        best_checkpoint = Path(tune_best.path) / CHECKPOINT_FILE if tune_best else None
    # With repeats a trial's score is the mean over its repeats, not one epoch's best.
    scores = (
        {schema.mean(metric): top[metric], schema.std(metric): top.get(schema.std(metric))}
        if cfg.sweep.repeat is not None
        else {schema.best(metric): top[metric]}
    )
    counts = {schema.TRIALS: len(rows), schema.TRIALS_FAILED: sum(r["error"] for r in rows)}
    parent.log_metrics({k: v for k, v in {**scores, **counts}.items() if v is not None})
    parent.set_tags({schema.BEST_TRIAL: top["trial"]})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "best_config.yaml").write_text(yaml.safe_dump(best_config, sort_keys=False))
        _write_csv(rows, folder / "trials.csv")
        plot = folder / f"{metric.replace('/', '_')}_by_param.png"
        plots.metric_by_param(rows, metric, list(cfg.sweep.space), plot)
        parent.log_artifact(folder)
    sweep_plots.after_sweep(parent, cfg.name, metric, mode, list(cfg.sweep.space))
    return SweepResult(
        best_config=best_config,
        best_metric=top[metric],
        metric=metric,
        mode=mode,
        best_checkpoint=best_checkpoint,
        parent_run_id=parent.run_id,
        tracking_uri=parent.uri,
        path=path,
        trials=rows,
    )


def _trial_row(result: Any, metric: str, mode: str) -> dict[str, Any]:
    """One trial's sampled params and the best value of its metric history."""
    history = result.metrics_dataframe
    values = history[metric].dropna() if history is not None and metric in history else None
    best = None if values is None or values.empty else float(values.max() if mode == "max" else values.min())
    params = flatten(result.config or {})
    return {"trial": result.metrics.get("trial_id"), **params, metric: best, "error": bool(result.error)}


def _score_by_repeat_mean(
    cfg: ExperimentConfig, parent: tracking.Run, rows: list[dict[str, Any]], metric: str
) -> None:
    """A repeated trial's score is its run's mean over the repeats' best epochs (Tune saw the mean curve,
    whose best epoch is another number)."""
    runs = {r.tags.get(schema.TRIAL_ID): r for r in trial_runs(cfg, parent)}
    for row in rows:
        record = runs.get(row["trial"])
        metrics = record.metrics if record is not None else {}
        row[metric] = metrics.get(schema.mean(metric))
        row[schema.std(metric)] = metrics.get(schema.std(metric))
        row[schema.REPEATS] = metrics.get(schema.REPEATS)


def _best_repeat(cfg: ExperimentConfig, parent: tracking.Run, trial: str, metric: str, mode: str) -> str:
    """The folder (under the trial's) of the checkpoint to hand back: the trial's best repeat's, if any."""
    assert cfg.sweep is not None
    if cfg.sweep.repeat is None:
        return ""
    run = tracking.find_run(
        parent.uri, cfg.name, {schema.TRIAL_ID: trial, schema.PARENT_RUN_ID: parent.run_id}
    )
    if run is None:
        return ""
    return sweep_repeats.best_repeat_folder(run, cfg.name, cfg.sweep.repeat, metric, mode)


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
