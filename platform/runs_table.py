"""`plexlab runs EXPERIMENT`: an experiment's runs as a table, best first by the model's primary metric."""

from __future__ import annotations

from typing import Any

from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from plexlab import registry, tracking
from plexlab.errors import RegistryError, TrackingError

# Params every run has that say nothing about how runs differ.
_QUIET_PARAMS = ("tracking.", "name", "sweep.")


def rows(experiment: str, uri: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """One dict per run: run name and id, status, parent, the params that vary, the summary metrics."""
    uri = tracking.resolve_uri(uri)
    tracking.check(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments(max_results=50)) or "none"
        raise TrackingError(f"no experiment named {experiment!r} in {uri} (experiments: {names})")
    runs = client.search_runs([found.experiment_id], max_results=limit)
    varying = _varying_params([r.data.params for r in runs])
    metric, mode = _primary([r.data.tags.get("plexlab.model") for r in runs])
    out = []
    for r in runs:
        metrics = {k: v for k, v in r.data.metrics.items() if k.startswith("test/") or k.endswith("_best")}
        out.append(
            {
                "run": r.info.run_name,
                "run_id": r.info.run_id,
                "status": r.info.status,
                "model": r.data.tags.get("plexlab.model", ""),
                "parent": (r.data.tags.get(MLFLOW_PARENT_RUN_ID) or "")[:8],
                **{k: r.data.params[k] for k in varying if k in r.data.params},
                **dict(sorted(metrics.items())),
            }
        )
    if metric:
        key = f"{metric}_best"
        sign = -1 if mode == "max" else 1
        out.sort(key=lambda row: (row.get(key) is None, sign * row[key] if row.get(key) is not None else 0))
    return out


def _varying_params(params: list[dict[str, str]]) -> list[str]:
    """Keys whose value differs between the runs that have them (a sweep's parent has none of a trial's)."""
    keys = sorted({k for p in params for k in p if not k.startswith(_QUIET_PARAMS)})
    return [k for k in keys if len({p[k] for p in params if k in p}) > 1]


def _primary(models: list[str | None]) -> tuple[str | None, str]:
    for name in models:
        if name:
            try:
                cls = registry.model_class(name)
            except RegistryError:
                continue
            return getattr(cls, "primary_metric", None), getattr(cls, "primary_mode", "min")
    return None, "min"
