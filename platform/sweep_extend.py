"""Sweeps that build on earlier trials: `--extend N` (more trials under a finished sweep's parent run) and
`sweep.start_from` (a new sweep that first tries an old sweep's best configs).

Tune's `Tuner.restore` cannot add samples, so an extension is a new Tune experiment in the same storage
(`<name>-extend<k>`) whose trials are child runs of the same MLflow parent; the parent's `schema.EXTENDED`
tag lists the extensions' folders, so the summary ranks every trial of every part. Optuna is told the
finished trials' configs and scores before it suggests anything (`evaluated_rewards`), so it learns from
them; random and grid search have nothing to learn and draw new samples; HyperOpt (whose Ray wrapper takes
no scores) starts afresh.

Configs come back from MLflow (the trial runs' params), the record that outlives Tune's folders; a param is
read back as the type its space distribution gives (a choice's own value, a float, an int).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plexlab import schema, tracking
from plexlab.config import ExperimentConfig, set_dotted
from plexlab.errors import ConfigError

EXTENSION_SEPARATOR = ","


@dataclass(frozen=True)
class Point:
    """A finished trial's searched values (dotted keys) and its score."""

    params: dict[str, Any]
    score: float


def finished_points(cfg: ExperimentConfig, parent_run_id: str, metric: str, mode: str) -> list[Point]:
    """The scored trials of a sweep's parent run, best first, with the values of this sweep's space keys."""
    assert cfg.sweep is not None
    uri = cfg.tracking.uri
    assert uri is not None
    points = []
    for run in tracking.search(uri, cfg.name, {schema.PARENT_RUN_ID: parent_run_id}):
        score = run.metrics.get(schema.mean(metric), run.metrics.get(schema.best(metric)))
        if run.tags.get(schema.KIND) != schema.TRIAL or score is None:
            continue
        params = {k: _parse(spec, run.params[k]) for k, spec in cfg.sweep.space.items() if k in run.params}
        if len(params) == len(cfg.sweep.space):
            points.append(Point(params, score))
    return sorted(points, key=lambda p: p.score, reverse=mode == "max")


def _parse(spec: dict[str, Any], text: str) -> Any:
    """An MLflow param (text) as the value its distribution draws."""
    kind, args = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        return next((a for a in args if str(a) == text), text)
    return int(float(text)) if kind == "randint" else float(text)


def nested(params: dict[str, Any]) -> dict[str, Any]:
    """{"model.lr": 0.1} -> {"model": {"lr": 0.1}}: a config in the shape of Tune's param space."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        set_dotted(out, key, value)
    return out


def start_points(cfg: ExperimentConfig, metric: str, mode: str) -> list[dict[str, Any]]:
    """`sweep.start_from`: the old sweep's (a parent run of the same experiment) best configs, at most half
    of this sweep's trials (the rest explore), each as a point to evaluate first."""
    assert cfg.sweep is not None and cfg.sweep.start_from is not None
    uri = cfg.tracking.uri
    assert uri is not None
    sweeps = {r.run_id for r in tracking.search(uri, cfg.name, {schema.KIND: schema.SWEEP_KIND})}
    if cfg.sweep.start_from not in sweeps:
        raise ConfigError(
            cfg.source, "sweep.start_from", f"no sweep run {cfg.sweep.start_from} in experiment {cfg.name}"
        )
    points = finished_points(cfg, cfg.sweep.start_from, metric, mode)
    if not points:
        raise ConfigError(
            cfg.source,
            "sweep.start_from",
            f"sweep run {cfg.sweep.start_from} has no scored trial of this space",
        )
    keep = max(1, cfg.sweep.num_samples // 2)
    return [p.params for p in points[:keep]]


def extensions(parent: tracking.Run) -> list[str]:
    """The Tune folders earlier `--extend` calls added to this sweep."""
    text = parent.record().tags.get(schema.EXTENDED, "")
    return [p for p in text.split(EXTENSION_SEPARATOR) if p]
