"""A sweep's pictures on its parent run, built from MLflow (the parent's child runs: their params and metric
histories): parallel coordinates of the hyperparameters against the metric, hyperparameter importance, and
every trial's learning curve on one plot. PNG files under `plots/` of the parent run.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from plexlab import schema, tracking
from plexlab.config import load
from plexlab.errors import ConfigError

matplotlib.use("Agg")  # headless: sweep drivers and CI have no display
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

log = logging.getLogger(__name__)

FOLDER = "plots"
MIN_TRIALS = 3  # fewer scored trials tell nothing about importance


@dataclass(frozen=True)
class Trial:
    """One trial as MLflow recorded it: its swept hyperparameters, its score and its curve (epoch, value)."""

    name: str
    params: dict[str, Any]
    score: float | None
    curve: list[tuple[int, float]]


def trials(parent: tracking.Run, experiment: str, metric: str, mode: str, params: list[str]) -> list[Trial]:
    """The parent's child runs as trials, oldest first; a trial's score is its repeats' mean, else its best
    epoch (the summary metric, else the best of its history)."""
    found = []
    for record in reversed(tracking.search(parent.uri, experiment, {schema.PARENT_RUN_ID: parent.run_id})):
        run = tracking.Run(parent.client, record.run_id, parent.uri)
        history = sorted(run.history(metric))
        epochs: dict[int, int] = {}
        for step, epoch in run.history(schema.EPOCH):  # an epoch's end may share a step with the next's start
            epochs[step] = min(epochs.get(step, int(epoch)), int(epoch))
        curve = [(epochs.get(step, i), value) for i, (step, value) in enumerate(history)]
        score = record.metrics.get(schema.mean(metric), record.metrics.get(schema.best(metric)))
        if score is None and history:
            values = [v for _, v in history]
            score = max(values) if mode == "max" else min(values)
        values = {p: _value(record.params[p]) for p in params if p in record.params}
        name = record.tags.get(schema.TRIAL_ID) or record.name
        found.append(Trial(name, values, score, curve))
    return found


def _value(text: str) -> Any:
    """A param as MLflow stores it (text), back as the number it was where it is one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _log_scale(values: list[Any]) -> bool:
    return bool(values) and _numeric(values) and min(values) > 0 and max(values) / min(values) > 100


def _message(path: Path, title: str, text: str) -> Path:
    """A plot that says why there is nothing to draw, so the artifact is always there to open."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def varied(trial_list: list[Trial], params: list[str]) -> list[str]:
    """The hyperparameters that took more than one value among the scored trials."""
    scored = [t for t in trial_list if t.score is not None]
    return [p for p in params if len({str(t.params.get(p)) for t in scored}) > 1]


def parallel_coordinates(trial_list: list[Trial], params: list[str], metric: str, path: Path) -> Path:
    """One vertical axis per hyperparameter and one for the metric; one line per scored trial, coloured by
    its score. Numbers are scaled to their range (log10 for spans over two decades), choices spaced evenly."""
    scored = [t for t in trial_list if t.score is not None]
    if not scored:
        return _message(path, "parallel coordinates", f"no trial reported {metric}")
    axes = [p for p in params if any(p in t.params for t in scored)] + [metric]
    columns = {p: [t.params.get(p) for t in scored] for p in axes[:-1]}
    columns[metric] = [t.score for t in scored]
    scaled, labels = {}, {}
    for name, values in columns.items():
        scaled[name], labels[name] = _scale(values)
    fig, ax = plt.subplots(figsize=(max(4.0, 2.2 * len(axes)), 4))
    scores = columns[metric]
    low, high = min(scores), max(scores)
    cmap = plt.get_cmap("viridis")
    for i, trial in enumerate(scored):
        shade = 0.5 if high == low else (trial.score - low) / (high - low)
        ax.plot(range(len(axes)), [scaled[a][i] for a in axes], color=cmap(shade), alpha=0.8, marker="o")
    for x, name in enumerate(axes):
        ax.axvline(x, color="grey", linewidth=0.8)
        for y, text in labels[name]:
            ax.text(x + 0.03, y, text, fontsize=7, va="center")
    names = [f"{a} (log)" if _log_scale([v for v in columns[a] if v is not None]) else a for a in axes]
    ax.set_xticks(range(len(axes)), names, rotation=15)
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    unscored = len(trial_list) - len(scored)
    ax.set_title(
        f"{metric} by hyperparameters: {len(scored)} trials" + (f" ({unscored} unscored)" * bool(unscored))
    )
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(low, high)), ax=ax, label=metric)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _scale(values: list[Any]) -> tuple[list[float], list[tuple[float, str]]]:
    """Values on [0, 1] and the tick labels to write beside the axis."""
    present = [v for v in values if v is not None]
    if present and _numeric(present):
        log_scale = _log_scale(present)
        at = [math.log10(v) if log_scale else float(v) for v in present]
        low, high = min(at), max(at)
        span = high - low or 1.0
        scaled = [0.5 if v is None else ((math.log10(v) if log_scale else v) - low) / span for v in values]
        ends = (
            [(0.0, f"{min(present):.3g}"), (1.0, f"{max(present):.3g}")]
            if high > low
            else [(0.5, f"{low:.3g}")]
        )
        return scaled, ends
    choices = sorted({str(v) for v in values})
    where = {c: (i / (len(choices) - 1) if len(choices) > 1 else 0.5) for i, c in enumerate(choices)}
    return [where[str(v)] for v in values], [(where[c], c) for c in choices]


def importances(trial_list: list[Trial], params: list[str], mode: str) -> dict[str, float]:
    """Each varied hyperparameter's share of the metric's variance: Optuna's fANOVA evaluator over the trials
    as a study (the sweep need not have used Optuna)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    scored = [t for t in trial_list if t.score is not None and all(p in t.params for p in params)]
    distributions: dict[str, Any] = {}
    for p in params:
        values = [t.params[p] for t in scored]
        if _numeric(values) and all(isinstance(v, int) for v in values):
            distributions[p] = IntDistribution(min(values), max(values))
        elif _numeric(values):
            distributions[p] = FloatDistribution(min(values), max(values), log=_log_scale(values))
        else:
            distributions[p] = CategoricalDistribution(sorted({str(v) for v in values}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for t in scored:
        chosen = {p: t.params[p] if _numeric([t.params[p]]) else str(t.params[p]) for p in params}
        study.add_trial(optuna.trial.create_trial(params=chosen, distributions=distributions, value=t.score))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning on the evaluator
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator, params=params))


def importance_plot(trial_list: list[Trial], params: list[str], metric: str, mode: str, path: Path) -> Path:
    """A bar per varied hyperparameter; a plot that says why when there is too little to tell."""
    title = f"hyperparameter importance for {metric}"
    scored = [t for t in trial_list if t.score is not None]
    moved = varied(trial_list, params)
    if len(scored) < MIN_TRIALS:
        return _message(path, title, f"{len(scored)} scored trials: importance needs at least {MIN_TRIALS}")
    if len(moved) < 2:
        what = f"only {moved[0]} varied" if moved else "no hyperparameter varied"
        return _message(path, title, f"{what}: nothing to compare its importance with")
    if len({t.score for t in scored}) == 1:
        return _message(path, title, f"every trial scored {scored[0].score:.4g}: no variance to explain")
    shares = importances(trial_list, moved, mode)
    names = sorted(shares, key=shares.get)
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
    ax.barh(names, [shares[n] for n in names])
    ax.set_xlabel("share of the variance (fANOVA, Optuna)")
    ax.set_title(f"{title} ({len(scored)} trials)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curves(trial_list: list[Trial], metric: str, path: Path) -> Path:
    """The sweep metric per epoch, one line per trial, on one plot."""
    drawn = [t for t in trial_list if t.curve]
    if not drawn:
        return _message(path, f"{metric} per epoch", f"no trial logged {metric}")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for trial in drawn:
        epochs, values = zip(*trial.curve, strict=True)
        ax.plot(epochs, values, label=trial.name, marker="." if len(epochs) < 30 else None, alpha=0.85)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch: {len(drawn)} trials")
    if len(drawn) <= 12:  # beyond that a legend hides the curves
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_plots(parent: tracking.Run, experiment: str, metric: str, mode: str, params: list[str]) -> list[str]:
    """The three plots, from the parent's child runs, logged under `plots/`; returns their artifact paths."""
    found = trials(parent, experiment, metric, mode, params)
    stem = metric.replace("/", "_")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / FOLDER
        folder.mkdir()
        made = [
            parallel_coordinates(found, params, metric, folder / "parallel_coordinates.png"),
            importance_plot(found, params, metric, mode, folder / "param_importance.png"),
            learning_curves(found, metric, folder / f"{stem}_per_epoch.png"),
        ]
        parent.log_artifact(folder, FOLDER)
    return [f"{FOLDER}/{p.name}" for p in made]


def after_sweep(parent: tracking.Run, experiment: str, metric: str, mode: str, params: list[str]) -> None:
    """`log_plots` at the end of a sweep: a plot that fails is a warning, never a failed sweep."""
    try:
        log_plots(parent, experiment, metric, mode, params)
    except Exception as exc:  # the trials trained and are recorded; pictures are a convenience
        log.warning("could not plot the sweep: %s", exc)


def rebuild(config: Any, overrides: Any = None, *, allow_tracking_uri: bool = False) -> tuple[str, list[str]]:
    """A finished (or interrupted) sweep's plots, built again: its parent run id and the plots' paths."""
    from plexlab import sweep, sweep_runs  # the sweep's name and objective (sweep imports Ray: lazily)

    cfg = load(config, overrides)
    if cfg.sweep is None:
        raise ConfigError(cfg.source, "sweep", "missing: this file has no sweep section")
    uri = tracking.trusted_uri(cfg.tracking.uri, cfg.source, allow_other_host=allow_tracking_uri)
    name = sweep.sweep_name(cfg)
    parent = sweep_runs.find_parent(cfg, name, uri)
    if parent is None:
        raise ConfigError(cfg.source, "sweep", f"no sweep {name} recorded in {uri}")
    metric, mode = sweep.objective(cfg)
    return parent.run_id, log_plots(parent, cfg.name, metric, mode, list(cfg.sweep.space))
