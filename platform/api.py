"""The Python API: what the CLI does, callable from a script or a notebook.

Overrides are dotted keys, given as a dict, as `KEY=VALUE` strings (what `--set` takes), or as keyword
arguments with `__` for the dot: `fit("sweeps/hypergcl_cora.yaml", model__lr=0.01)` equals
`plexlab fit ... --set model.lr=0.01`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from plexlab import contract, inference, registry, runs_table, tracking, train
from plexlab.config import ExperimentConfig, load, parse_override
from plexlab.train import FitResult

if TYPE_CHECKING:
    from collections.abc import Iterator

    from plexlab.launch import ClusterJob, LocalSweep
    from plexlab.sweep_runs import SweepResult

Config = str | Path | dict[str, Any] | ExperimentConfig
Overrides = dict[str, Any] | list[str] | None

__all__ = [
    "FitResult",
    "check",
    "check_data",
    "datamodules",
    "embed",
    "experiment_id",
    "fit",
    "job_logs",
    "jobs",
    "models",
    "runs",
    "simulate",
    "stop_job",
    "submit",
    "sweep",
    "sweep_plots",
    "sweep_status",
    "test",
    "tracking_uri",
]


def _merge(overrides: Overrides, kwargs: dict[str, Any]) -> dict[str, Any]:
    if isinstance(overrides, list):
        overrides = dict(parse_override(item) for item in overrides)
    return {**(overrides or {}), **{k.replace("__", "."): v for k, v in kwargs.items()}}


def fit(
    config: Config,
    overrides: Overrides = None,
    *,
    resume: str | None = None,
    allow_tracking_uri: bool = False,
    **kwargs: Any,
) -> FitResult:
    """Train and test one model; returns test metrics, the MLflow run id and the best checkpoint.
    `resume`: a run id, or "last" (the experiment's newest unfinished fit), continued from its last
    checkpoint into the same run. `allow_tracking_uri`: send runs to the file's tracking server even if it
    is not your own."""
    return train.fit(config, _merge(overrides, kwargs), resume=resume, allow_tracking_uri=allow_tracking_uri)


def check(config: Config, overrides: Overrides = None, **kwargs: Any) -> dict[str, Any]:
    """Validate an experiment file (its base files merged, overrides applied) without training; returns the
    resolved config as it would be recorded (a tracking URI's credentials left out)."""
    from plexlab.sweep_config import check_schedule

    cfg = load(config, _merge(overrides, kwargs))
    if cfg.sweep is not None:
        check_schedule(cfg.sweep.scheduler, cfg.trainer, cfg.source)
    return cfg.public_dict()


def test(
    config: Config,
    ckpt: str | Path,
    overrides: Overrides = None,
    *,
    allow_tracking_uri: bool = False,
    **kwargs: Any,
) -> FitResult:
    """Evaluate a checkpoint on the config's test split (recorded as an MLflow run)."""
    return inference.test(config, ckpt, _merge(overrides, kwargs), allow_tracking_uri=allow_tracking_uri)


def embed(
    config: Config, ckpt: str | Path, out: str | Path, overrides: Overrides = None, **kwargs: Any
) -> Path:
    """Write every sample's embedding: into a copy of the input where the data module can (AnnData),
    else an .npz with `ids` and `embedding`."""
    merged = _merge(overrides, kwargs)
    ids, values, dm = inference.predict(config, ckpt, merged)
    out = Path(out)
    if isinstance(dm, contract.WritesEmbedding):
        return Path(dm.write_embedding(values, out, load(config, merged).model_name))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, ids=np.asarray(ids), embedding=values)
    tmp.replace(out)
    return out


def sweep(
    config: Config,
    overrides: Overrides = None,
    *,
    address: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    extend: int | None = None,
    allow_tracking_uri: bool = False,
    insecure_local_ray: bool = False,
    verbose: bool = False,
    wait: bool = True,
    **kwargs: Any,
) -> SweepResult | LocalSweep:
    """Run (or resume) the config's sweep with Ray Tune; returns the best config, metric, checkpoint and
    the MLflow parent run id. `extend`: add that many trials to the finished sweep, under its parent run.
    `insecure_local_ray` starts a local Ray even with RAY_AUTH_MODE=disabled. Progress shows as one table
    of trials (one line per trial event off a terminal); `verbose`: Ray Tune's own output instead.
    `wait=False`: run it in a process of its own and return at once a handle (status, best, wait, stop; see
    plexlab.launch)."""
    options = {
        "address": address,
        "storage": storage,
        "resume": resume,
        "extend": extend,
        "allow_tracking_uri": allow_tracking_uri,
        "insecure_local_ray": insecure_local_ray,
    }
    if not wait:
        from plexlab import launch

        # a path: launch.local refuses anything else in one line
        return launch.local(config, _merge(overrides, kwargs), **options)  # type: ignore[arg-type]
    from plexlab import sweep as driver

    return driver.sweep(config, _merge(overrides, kwargs), verbose=verbose, **options)


def submit(
    config: str | Path,
    overrides: Overrides = None,
    *,
    address: str | None = None,
    token: str | None = None,
    resume: bool = False,
    storage: str | None = None,
    **kwargs: Any,
) -> ClusterJob:
    """Run the file's sweep (a file without one: its fit) on a Ray cluster as a job, through the job server
    at `address` (`http://HEAD:8265`, else RAY_API_SERVER_ADDRESS); returns a handle with the job id and
    status, best, wait, stop. `token`: the cluster's (default RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH's file,
    ~/.ray/auth_token). `resume`: continue a stopped sweep."""
    from plexlab import launch

    merged = _merge(overrides, kwargs)
    return launch.submit(config, merged, address=address, auth_token=token, resume=resume, storage=storage)


def jobs(address: str | None = None, token: str | None = None) -> list[dict[str, Any]]:
    """The cluster's plexlab jobs, newest first: id, status, command, experiment, start, best so far."""
    from plexlab import launch

    return launch.job_rows(address, token)


def job_logs(
    job_id: str, address: str | None = None, token: str | None = None, *, follow: bool = False
) -> Iterator[str]:
    """A job's output; with `follow`, as it comes until the job ends."""
    from plexlab import jobs as cluster

    return cluster.logs(job_id, address, token, follow=follow)


def stop_job(job_id: str, address: str | None = None, token: str | None = None) -> str:
    """Stop a job (its runs end, none left RUNNING; `submit(..., resume=True)` continues it); returns
    its final status."""
    from plexlab import jobs as cluster

    return cluster.stop(job_id, address, token)


def sweep_status(
    config: Config, overrides: Overrides = None, *, allow_tracking_uri: bool = False, **kwargs: Any
) -> tuple[str, int, list[dict]]:
    """A sweep's progress from MLflow: its name, its planned trial count and one row per recorded trial."""
    from plexlab import sweep as driver

    return driver.status_rows(config, _merge(overrides, kwargs), allow_tracking_uri=allow_tracking_uri)


def sweep_plots(
    config: Config, overrides: Overrides = None, *, allow_tracking_uri: bool = False, **kwargs: Any
) -> tuple[str, list[str]]:
    """Build a recorded sweep's plots again from MLflow (parallel coordinates, importance, learning curves,
    under `plots/` of its parent run); returns the parent run id and the plots' artifact paths."""
    from plexlab import sweep_plots as pictures

    return pictures.rebuild(config, _merge(overrides, kwargs), allow_tracking_uri=allow_tracking_uri)


def check_data(path: str | Path, data: str, overrides: Overrides = None, **kwargs: Any) -> dict[str, Any]:
    """Read and validate `path` with data module `data` (its settings as `data.*` overrides) without
    training; returns what it found: counts, modalities, labels, splits, rejected records."""
    from plexlab import data_check

    return data_check.check(path, data, _merge(overrides, kwargs))


def runs(experiment: str, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """The experiment's runs as rows (run, status, params that vary, metrics), best first."""
    return runs_table.rows(experiment, tracking_uri)


def tracking_uri(uri: str | None = None) -> str:
    """The tracking store runs go to: `uri`, else MLFLOW_TRACKING_URI, else ./mlflow.db (absolute)."""
    return tracking.resolve_uri(uri)


def experiment_id(experiment: str | Path, tracking_uri: str | None = None) -> str:
    """The id of an experiment in the tracking store, named or given as an experiment file (its `name`)."""
    from plexlab.errors import TrackingError

    name = load(experiment).name if Path(experiment).is_file() else str(experiment)
    uri = tracking.resolve_uri(tracking_uri)
    found = tracking.find_experiment_id(uri, name)
    if found is None:
        raise TrackingError(f"no experiment {name!r} in {tracking.redact(uri)}")
    return found


def simulate(kind: str, out: str | Path, overrides: Overrides = None, **kwargs: Any) -> Path:
    """Write a simulated data set; `sparse-shift`: perturbations for svae (.h5ad)."""
    if kind != "sparse-shift":
        raise ValueError(f"unknown simulation {kind!r}; known: sparse-shift")
    from plexlab.datamodules.single_cell.perturbation_sim import write_sparse_shift

    return Path(write_sparse_shift(out, **_merge(overrides, kwargs)))


def models() -> dict[str, str]:
    """Registered model names and their one-line summaries."""
    return {name: entry.summary for name, entry in registry.models().items()}


def datamodules() -> dict[str, str]:
    """Registered data module names and their one-line summaries."""
    return {name: entry.summary for name, entry in registry.datamodules().items()}
