"""Sweeps with Ray Tune: the driver. It starts (or joins) Ray, runs or resumes the Tuner over the platform
runner, and leaves the bookkeeping to `sweep_runs` and the trials to `sweep_trial`.

A sweep is an MLflow parent run; each trial is a child run named after its trial id. Results live under a
storage path with a stable name (the config's name and hash), so `--resume` continues a sweep whose driver
died: finished trials are kept, running ones continue from their last checkpoint, and a trial that comes back
(resumed, or retried after a crash) finds its own MLflow run instead of opening a second one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray
from plexlab import local_ray, runs_table, schema, sweep_extend, sweep_repeats, sweep_runs, tracking, train
from plexlab.config import ExperimentConfig, load
from plexlab.errors import ConfigError
from plexlab.job_env import tags as job_tags
from plexlab.run_logs import driver_log
from plexlab.sweep_config import ResourcesConfig, check_schedule
from plexlab.sweep_runs import SweepResult
from plexlab.sweep_space import scheduler, search_algorithm, search_space, trial_space
from plexlab.sweep_stop import on_sigterm, raise_if_stopped, resuming
from plexlab.sweep_trial import TrialSpec, run_trial
from plexlab.sweep_view import SweepView, quiet_tune, replace_on_restore, run_config_args, view_for
from ray import tune
from ray.tune.search import BasicVariantGenerator

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "plexlab_sweeps"
DRIVER_CPU = 0.01  # the function of a multi-worker trial, which only waits on its Train workers
DEFAULT_CHECKPOINTS_KEPT = 2

__all__ = ["SweepResult", "status_rows", "sweep", "sweep_name"]


def sweep_name(cfg: ExperimentConfig) -> str:
    """Stable across restarts of the same sweep file: the experiment name and a hash of what it trains."""
    return f"{cfg.name}-{cfg.config_hash(include_sweep=True)[:8]}"


def sweep(
    config: str | Path | dict | ExperimentConfig,
    overrides: dict[str, Any] | list[str] | None = None,
    *,
    address: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    extend: int | None = None,
    allow_tracking_uri: bool = False,
    insecure_local_ray: bool = False,
    verbose: bool = False,
) -> SweepResult:
    """Run the config's sweep (or resume it, or `extend` a finished one by that many trials) and record it
    in MLflow; returns the best trial of the whole sweep. Progress shows as one table of trials (see
    sweep_view); `verbose`: Ray Tune's own output instead."""
    cfg = load(config, overrides)
    if cfg.sweep is None:
        raise ConfigError(cfg.source, "sweep", "missing: this file has no sweep section (use `plexlab fit`)")
    check_schedule(cfg.sweep.scheduler, cfg.trainer, cfg.source)  # a fit of the same file need not pass it
    if cfg.sweep.repeat is not None:
        sweep_repeats.check(cfg)
    metric, mode = objective(cfg)
    uri = tracking.trusted_uri(cfg.tracking.uri, cfg.source, allow_other_host=allow_tracking_uri)
    tracking.check(uri)
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": uri})})
    name, root = sweep_name(cfg), _storage(cfg, storage)
    path = f"{root}/{name}"
    exists = tune.Tuner.can_restore(path)
    if extend is not None and (resume or not exists or extend < 1):
        problem = "cannot be combined with --resume" if resume else f"needs a finished sweep at {path}"
        raise ConfigError(cfg.source, "--extend", problem if extend >= 1 else "takes a number of trials >= 1")
    if resume and not exists:
        raise ConfigError(cfg.source, "--resume", f"no sweep to resume at {path}")
    if exists and not resume and extend is None:
        raise ConfigError(cfg.source, "sweep", f"a sweep of this file already exists at {path}: add --resume")

    # Checked before Ray starts: the old sweep must exist and have scored trials.
    first = sweep_extend.start_points(cfg, metric, mode) if cfg.sweep.start_from and not resume else []
    started = local_ray.start(address, insecure=insecure_local_ray)
    try:
        if started:
            _check_trial_fits(cfg)
        else:
            _check_tracking_reaches_every_node(cfg, uri)
        parent = sweep_runs.parent_run(cfg, name, uri, resume or extend is not None)
        parent.set_tags({schema.SWEEP_PATH: path, **job_tags()})
        if resume:
            resuming(parent)
        with tracking.ending(parent), driver_log(parent):
            if extend is not None:
                return _extend(cfg, parent, extend, name, root, path, metric, mode, verbose)
            warm = _start_from(cfg, parent, first) if first else {}
            spec = _trial_spec(cfg, parent, root, path, metric)
            view = None if verbose else view_for(name, metric, mode, cfg.sweep.num_samples, cfg.trainer)
            tuner = _tuner(cfg, spec, name, root, path, metric, mode, resume, warm=warm, view=view)
            grid = _timed_fit(cfg, tuner, parent, quiet=view is not None)
            sweep_runs.close_trial_runs(cfg, parent, grid, metric, mode, path)
            return sweep_runs.summarize(cfg, grid, parent, metric, mode, path)
    finally:
        if started:
            ray.shutdown()


def _extend(
    cfg: ExperimentConfig,
    parent: tracking.Run,
    extra: int,
    name: str,
    root: str,
    path: str,
    metric: str,
    mode: str,
    verbose: bool = False,
) -> SweepResult:
    """`--extend N`: N more trials as a new Tune experiment beside the sweep's, under the same parent run,
    with Optuna told every finished trial's config and score first (see sweep_extend)."""
    assert cfg.sweep is not None
    previous = [path, *sweep_extend.extensions(parent)]
    ext_name = f"{name}-extend{len(previous)}"
    ext_path = f"{root}/{ext_name}"
    warm: dict[str, Any] = {}
    if cfg.sweep.search.name == "optuna":
        done = sweep_extend.finished_points(cfg, parent.run_id, metric, mode)
        warm = {
            "points_to_evaluate": [{k.replace(".", "/"): v for k, v in p.params.items()} for p in done],
            "evaluated_rewards": [p.score for p in done],
        }
    parent.set_tags({schema.EXTENDED: sweep_extend.EXTENSION_SEPARATOR.join([*previous[1:], ext_path])})
    spec = _trial_spec(cfg, parent, root, ext_path, metric)
    view = None if verbose else view_for(ext_name, metric, mode, extra, cfg.trainer)
    tuner = _tuner(
        cfg, spec, ext_name, root, ext_path, metric, mode, False, warm=warm, num_samples=extra, view=view
    )
    grid = _timed_fit(cfg, tuner, parent, quiet=view is not None)
    sweep_runs.close_trial_runs(cfg, parent, grid, metric, mode, ext_path)
    trainable = tune.with_parameters(run_trial, spec=spec)
    results, where = list(grid), {r.metrics.get("trial_id"): ext_path for r in grid}
    for folder in previous:  # the earlier parts' results, as Tune recorded them
        for result in tune.Tuner.restore(folder, trainable).get_results():
            results.append(result)
            where[result.metrics.get("trial_id")] = folder
    return sweep_runs.summarize(cfg, results, parent, metric, mode, path, where=where)


def _start_from(cfg: ExperimentConfig, parent: tracking.Run, points: list[dict[str, Any]]) -> dict[str, Any]:
    """`sweep.start_from`: the old sweep's best configs as the searcher's first points."""
    assert cfg.sweep is not None
    parent.set_tags({schema.START_FROM: f"{cfg.sweep.start_from}: {len(points)} configs tried first"})
    if cfg.sweep.search.name == "optuna":
        return {"points_to_evaluate": [{k.replace(".", "/"): v for k, v in p.items()} for p in points]}
    return {"points_to_evaluate": [sweep_extend.nested(p) for p in points]}


def _timed_fit(cfg: ExperimentConfig, tuner: tune.Tuner, parent: tracking.Run, quiet: bool = False) -> Any:
    """Tuner.fit (`quiet`: Tune's own output off, for the view); with `time_budget_s`, the parent says
    whether the budget ran out."""
    assert cfg.sweep is not None
    started = time.monotonic()
    # SIGTERM: Tune saves the sweep for --resume, and the runs end KILLED
    with quiet_tune(quiet), on_sigterm() as stop:
        grid = tuner.fit()
    raise_if_stopped(stop, cfg, parent)
    budget = cfg.sweep.time_budget_s
    if budget is not None:
        spent = time.monotonic() - started
        verdict = "ran out: trials still running were stopped" if spent >= budget else "not reached"
        parent.set_tags({schema.TIME_BUDGET: f"{budget:g} s, {verdict} (the sweep took {spent:.0f} s)"})
    return grid


def objective(cfg: ExperimentConfig) -> tuple[str, str]:
    """The metric and mode trials are ranked by: the sweep's, else the model's primary metric."""
    assert cfg.sweep is not None
    metric, mode = train.primary(cfg)
    return cfg.sweep.metric or metric, cfg.sweep.mode or (mode if not cfg.sweep.metric else "max")


def checkpoints_kept(cfg: ExperimentConfig) -> int | None:
    """The Tune checkpoints each trial keeps (None: all); see SweepConfig.checkpoints_kept."""
    assert cfg.sweep is not None
    if cfg.sweep.checkpoints_kept is not None:
        return cfg.sweep.checkpoints_kept
    return None if cfg.sweep.scheduler.name == "pbt" else DEFAULT_CHECKPOINTS_KEPT


def _storage(cfg: ExperimentConfig, storage: str | None) -> str:
    assert cfg.sweep is not None
    where = storage or cfg.sweep.storage or DEFAULT_STORAGE
    return where if "://" in where else str(Path(where).expanduser().resolve())


def _trial_shape(res: ResourcesConfig) -> dict[str, float]:
    """What Tune reserves for a trial's function: all of the trial's resources with one worker; a sliver of
    a CPU with several, whose Train workers hold the real resources (Tune refuses zero)."""
    return {"cpu": res.cpu, "gpu": res.gpu} if res.workers == 1 else {"cpu": DRIVER_CPU}


def _check_trial_fits(cfg: ExperimentConfig) -> None:
    """On Ray started here, a trial larger than the machine would wait forever: say so instead."""
    assert cfg.sweep is not None
    res = cfg.sweep.resources
    workers_cpu = res.cpu * res.workers if res.workers > 1 else 0.0
    need = {"CPU": _trial_shape(res)["cpu"] + workers_cpu, "GPU": res.gpu * res.workers}
    have = ray.cluster_resources()
    for kind, amount in need.items():
        if amount > have.get(kind, 0.0) + 1e-9:
            raise ConfigError(
                cfg.source,
                "sweep.resources",
                f"one trial needs {amount:g} {kind} (workers: {res.workers}, cpu: {res.cpu:g},"
                f" gpu: {res.gpu:g} each) but this machine's Ray has {have.get(kind, 0.0):g}",
            )


def _check_tracking_reaches_every_node(cfg: ExperimentConfig, uri: str) -> None:
    """Trials on other machines cannot write this machine's SQLite file: their runs would go missing."""
    if not (uri.startswith(("sqlite:", "file:")) or "://" not in uri):
        return
    hosts = {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
    if len(hosts) > 1:
        raise ConfigError(
            cfg.source,
            "tracking.uri",
            f"{uri} is a file on this machine but the Ray cluster spans {len(hosts)} hosts;"
            " give an MLflow server (http://...) or set MLFLOW_TRACKING_URI",
        )


def _trial_spec(cfg: ExperimentConfig, parent: tracking.Run, root: str, path: str, metric: str) -> TrialSpec:
    assert cfg.sweep is not None
    res, pbt = cfg.sweep.resources, cfg.sweep.scheduler.name == "pbt"
    return TrialSpec(
        base={k: v for k, v in cfg.to_dict().items() if k != "sweep"},
        parent_run_id=parent.run_id,
        cpu=res.cpu,
        gpu=res.gpu,
        workers=res.workers,
        checkpoint_every=1 if pbt else cfg.sweep.checkpoint_every,
        pbt=pbt,
        storage=root,
        path=path,
        max_failures=cfg.sweep.max_failures,
        metric=metric,
        repeat=cfg.sweep.repeat,
    )


def _tuner(
    cfg: ExperimentConfig,
    spec: TrialSpec,
    name: str,
    root: str,
    path: str,
    metric: str,
    mode: str,
    resume: bool,
    *,
    warm: dict[str, Any] | None = None,
    num_samples: int | None = None,
    view: SweepView | None = None,
) -> tune.Tuner:
    """`warm`: points to evaluate first (and Optuna's scores of them); `num_samples`: an extension's;
    `view`: the sweep's live view (None: Tune's own tables)."""
    assert cfg.sweep is not None
    trainable = tune.with_parameters(run_trial, spec=spec)
    trainable = tune.with_resources(trainable, _trial_shape(cfg.sweep.resources))
    if resume:
        restored = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        replace_on_restore(restored, view)
        return restored
    grid = cfg.sweep.search.name == "grid"
    search_alg = search_algorithm(cfg, metric, mode, **(warm or {}))
    if search_alg is None and warm:  # random or grid, with points to try first
        search_alg = BasicVariantGenerator(max_concurrent=cfg.sweep.max_concurrent or 0, **warm)
    # optuna and hyperopt are limited by their ConcurrencyLimiter, the generator above by itself
    own_limit = cfg.sweep.search.name in ("random", "grid") and not warm
    return tune.Tuner(
        trainable,
        param_space=search_space(trial_space(cfg)),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            num_samples=1 if grid else num_samples or cfg.sweep.num_samples,
            scheduler=scheduler(cfg),
            search_alg=search_alg,
            max_concurrent_trials=cfg.sweep.max_concurrent if own_limit else None,
            reuse_actors=cfg.sweep.resources.workers == 1,
            time_budget_s=cfg.sweep.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=root,
            failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_kept(cfg)),
            **run_config_args(view),
        ),
    )


def status_rows(
    config: str | Path | dict | ExperimentConfig,
    overrides: dict[str, Any] | list[str] | None = None,
    *,
    allow_tracking_uri: bool = False,
) -> tuple[str, int, list[dict[str, Any]]]:
    """A sweep's progress (running, finished or interrupted), read from its MLflow child runs: the sweep's
    name, its planned number of trials and one row per recorded trial."""
    cfg = load(config, overrides)
    if cfg.sweep is None:
        raise ConfigError(cfg.source, "sweep", "missing: this file has no sweep section")
    name = sweep_name(cfg)
    uri = tracking.trusted_uri(cfg.tracking.uri, cfg.source, allow_other_host=allow_tracking_uri)
    parent = sweep_runs.find_parent(cfg, name, uri)
    if parent is None:
        raise ConfigError(cfg.source, "sweep", f"no sweep {name} recorded in {uri}")
    rows = [r for r in runs_table.rows(cfg.name, uri) if r["parent"] == parent.run_id[:8]]
    return name, cfg.sweep.num_samples, rows
