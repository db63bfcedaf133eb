"""`plexlab runs EXPERIMENT`: an experiment's runs as rows, best first by the model's primary metric."""

from __future__ import annotations

from typing import Any

from plexlab import contract, registry, schema, tracking
from plexlab.errors import RegistryError, TrackingError

# Params every run has that say nothing about how runs differ.
_QUIET_PARAMS = ("tracking.", "name", "sweep.")


def rows(experiment: str, uri: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """One dict per run: run name and id, status, parent, the params that vary, the summary metrics."""
    uri = tracking.resolve_uri(uri)
    tracking.check(uri)
    if not tracking.has_experiment(uri, experiment):
        names = ", ".join(tracking.experiment_names(uri)) or "none"
        raise TrackingError(f"no experiment named {experiment!r} in {uri} (experiments: {names})")
    runs = tracking.search(uri, experiment, limit=limit)
    varying = _varying_params([r.params for r in runs])
    out = []
    for r in runs:
        metrics = {
            k: v
            for k, v in r.metrics.items()
            if k.startswith("test/") or k.endswith(("_best", "_mean", "_std"))
        }
        out.append(
            {
                "run": r.name,
                "run_id": r.run_id,
                "status": r.status,
                "model": r.tags.get(schema.MODEL, ""),
                "parent": (r.tags.get(schema.PARENT_RUN_ID) or "")[:8],
                **{k: r.params[k] for k in varying if k in r.params},
                **dict(sorted(metrics.items())),
            }
        )
    ranking = _primary([r.tags.get(schema.MODEL) for r in runs])
    if ranking is not None:
        sign = -1 if ranking[1] == "max" else 1
        out.sort(key=lambda row: (_score(row, ranking[0]) is None, sign * (_score(row, ranking[0]) or 0)))
    return out


def _score(row: dict[str, Any], metric: str) -> float | None:
    """A run's rank: a repeated trial's (or its sweep's) mean over the repeats, else its best epoch."""
    value = row.get(schema.mean(metric))
    return value if value is not None else row.get(schema.best(metric))


def _varying_params(params: list[dict[str, str]]) -> list[str]:
    """Keys whose value differs between the runs that have them (a sweep's parent has none of a trial's)."""
    keys = sorted({k for p in params for k in p if not k.startswith(_QUIET_PARAMS)})
    return [k for k in keys if len({p[k] for p in params if k in p}) > 1]


def _primary(models: list[str | None]) -> tuple[str, str] | None:
    """The primary metric of the first run's model that is still registered (runs may outlive a plugin)."""
    for name in models:
        if name:
            try:
                return contract.primary(registry.model_class(name))
            except RegistryError:
                continue
    return None
