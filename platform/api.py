"""The Python API: what the CLI does, callable from a script or a notebook.

Overrides are dotted keys, given as a dict or as keyword arguments with `__` for the dot:
`fit("sweeps/hypergcl_cora.yaml", model__lr=0.01)` equals `plexlab fit ... --set model.lr=0.01`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from plexlab import registry, runs_table, train
from plexlab.config import ExperimentConfig
from plexlab.train import FitResult

if TYPE_CHECKING:
    from plexlab.tune import SweepResult

Config = str | Path | dict[str, Any] | ExperimentConfig

__all__ = ["FitResult", "datamodules", "embed", "fit", "models", "runs", "sweep", "test"]


def _merge(overrides: dict[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**(overrides or {}), **{k.replace("__", "."): v for k, v in kwargs.items()}}


def fit(config: Config, overrides: dict[str, Any] | None = None, **kwargs: Any) -> FitResult:
    """Train and test one model; returns test metrics, the MLflow run id and the best checkpoint."""
    return train.fit(config, _merge(overrides, kwargs))


def test(
    config: Config, ckpt: str | Path, overrides: dict[str, Any] | None = None, **kwargs: Any
) -> FitResult:
    """Evaluate a checkpoint on the config's test split (recorded as an MLflow run)."""
    return train.test(config, ckpt, _merge(overrides, kwargs))


def embed(
    config: Config, ckpt: str | Path, out: str | Path, overrides: dict[str, Any] | None = None, **kwargs: Any
) -> Path:
    """Write every sample's embedding: into a copy of the input where the data module can (AnnData),
    else an .npz with `ids` and `embedding`."""
    ids, values, dm = train.predict(config, ckpt, _merge(overrides, kwargs))
    out = Path(out)
    writer = getattr(dm, "write_embedding", None)
    if writer is not None:
        cfg = train.load(config, _merge(overrides, kwargs))
        return Path(writer(values, out, cfg.model_name))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, ids=np.asarray(ids), embedding=values)
    tmp.replace(out)
    return out


def sweep(
    config: Config,
    overrides: dict[str, Any] | None = None,
    *,
    address: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    **kwargs: Any,
) -> SweepResult:
    """Run (or resume) the config's sweep with Ray Tune; returns the best config, metric, checkpoint and
    the MLflow parent run id."""
    from plexlab import tune

    return tune.sweep(config, _merge(overrides, kwargs), address=address, storage=storage, resume=resume)


def runs(experiment: str, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """The experiment's runs as rows (run, status, params that vary, metrics), best first."""
    return runs_table.rows(experiment, tracking_uri)


def models() -> dict[str, str]:
    """Registered model names and their one-line summaries."""
    return {name: entry.summary for name, entry in registry.models().items()}


def datamodules() -> dict[str, str]:
    """Registered data module names and their one-line summaries."""
    return {name: entry.summary for name, entry in registry.datamodules().items()}
