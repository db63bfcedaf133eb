"""Sweeps with Ray Tune: the sweep file's space, scheduler and search over the runner of `plexlab fit`.

A sweep is an MLflow parent run; each trial is a child run named after its trial id. Results live under a
storage path with a stable name (the config's name and hash), so `--resume` continues a sweep whose driver
died: finished trials are kept, running ones continue from their last checkpoint, and a trial that comes back
(resumed, or retried after a crash) finds its own MLflow run instead of opening a second one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import ray
import torch
import yaml
from plexlab import plots, runs_table, tracking, train
from plexlab.config import ExperimentConfig, ResourcesConfig, flatten, load
from plexlab.errors import ConfigError
from ray import tune
from rich.table import Table

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "plexlab_sweeps"
TRIAL_TAG = "plexlab.trial_id"
SWEEP_TAG = "plexlab.sweep"
PATH_TAG = "plexlab.sweep_path"
CHECKPOINT_FILE = "checkpoint.ckpt"
DRIVER_CPU = 0.01  # the function of a multi-worker trial, which only waits on its Train workers


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


# ---- the sweep file's pieces as Ray Tune objects -------------------------------------------------------


def search_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"model.lr": {"loguniform": [a, b]}} -> {"model": {"lr": tune.loguniform(a, b)}}, nested for Tune."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            dist = tune.choice(args)
        elif kind == "grid":
            dist = tune.grid_search(args)
        elif kind == "randint":
            dist = tune.randint(int(args[0]), int(args[1]))
        else:
            dist = getattr(tune, kind)(*(float(a) for a in args))
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = dist
    return out


def _grid_space(space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Grid search: every choice becomes a grid axis."""
    return {k: {"grid": next(iter(v.values()))} for k, v in space.items()}


def scheduler(cfg: ExperimentConfig, space: dict[str, Any]) -> Any:
    """The trial scheduler; time is counted in epochs (Tune's training_iteration)."""
    from ray.tune import schedulers as s

    sched = cfg.sweep.scheduler
    # Past the last epoch by default: a trial that trains to the end finishes itself (and is tested) instead
    # of being stopped by the scheduler at its final report.
    max_t = sched.max_t or int(cfg.trainer.get("max_epochs") or 100) + 1
    common = {"time_attr": "training_iteration"}
    if sched.name == "asha":
        return s.ASHAScheduler(
            **common, max_t=max_t, grace_period=sched.grace_period, reduction_factor=sched.reduction_factor
        )
    if sched.name == "hyperband":
        return s.HyperBandScheduler(**common, max_t=max_t, reduction_factor=sched.reduction_factor)
    if sched.name == "median":
        return s.MedianStoppingRule(**common, grace_period=sched.grace_period, min_samples_required=2)
    if sched.name == "pbt":
        keys = sched.mutations or list(cfg.sweep.space)
        mutations = search_space({k: cfg.sweep.space[k] for k in keys})
        return s.PopulationBasedTraining(
            **common, perturbation_interval=sched.perturbation_interval, hyperparam_mutations=mutations
        )
    return s.FIFOScheduler()


def search_algorithm(cfg: ExperimentConfig, metric: str, mode: str) -> Any:
    """Random and grid use Tune's own variant generator (None); optuna and hyperopt need their extras."""
    name = cfg.sweep.search.name
    try:
        if name == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            algo = OptunaSearch(metric=metric, mode=mode, seed=cfg.seed)
        elif name == "hyperopt":
            from ray.tune.search.hyperopt import HyperOptSearch

            algo = HyperOptSearch(metric=metric, mode=mode, random_state_seed=cfg.seed)
        else:
            return None
    except (ImportError, AssertionError) as exc:
        raise ConfigError(
            cfg.source, "sweep.search.name", f"{name} is not installed ({exc}); pip install 'plexlab[search]'"
        ) from None
    if cfg.sweep.max_concurrent:
        from ray.tune.search import ConcurrencyLimiter

        algo = ConcurrencyLimiter(algo, max_concurrent=cfg.sweep.max_concurrent)
    return algo


# ---- inside a trial ------------------------------------------------------------------------------------


class _ReportToTune(pl.Callback):
    """Report every epoch's metrics to Tune after the best checkpoint is saved; attach a resumable
    checkpoint every `every` epochs. (Ray's own callback reports before Lightning's ModelCheckpoint runs,
    so a trial stopped at that report would lose its best epoch.)"""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics["epoch"] = trainer.current_epoch
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        if (trainer.current_epoch + 1) % self.every and not last:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save_checkpoint(Path(tmp) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


class _ApplyMutatedLearningRate(pl.Callback):
    """PBT: a trial restored from another's checkpoint must train with its own (mutated) learning rate,
    not the one stored in the optimizer state it inherited."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lr = pl_module.hparams.get("lr")
        if lr is None:
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr


def _trial_run(cfg: ExperimentConfig, parent_run_id: str, trial_id: str, trial_name: str) -> tracking.Run:
    """The trial's child run: found again when the trial resumes or is retried, created otherwise."""
    uri = cfg.tracking.uri
    run = tracking.find_run(uri, cfg.name, {TRIAL_TAG: trial_id, "mlflow.parentRunId": parent_run_id})
    if run is not None:
        run.client.update_run(run.run_id, status="RUNNING")
        return run
    tags = {**train.run_tags(cfg), TRIAL_TAG: trial_id, "plexlab.trial_name": trial_name}
    return tracking.create_run(uri, cfg.name, run_name=trial_id, tags=tags, parent_run_id=parent_run_id)


def run_trial(params: dict[str, Any], *, base: dict[str, Any], meta: dict[str, Any]) -> None:
    """One Tune trial: the sampled params applied to the base config, trained by the platform runner."""
    context = tune.get_context()
    cfg = load(base, flatten(params))
    torch.set_num_threads(max(1, int(meta["cpu"])))
    run = _trial_run(cfg, meta["parent_run_id"], context.get_trial_id(), context.get_trial_name())
    run.set_tags({"plexlab.ray_node": ray.get_runtime_context().get_node_id()})
    with tracking.ending(run, sigterm_is_stop=True):
        if meta["workers"] > 1:
            _fit_distributed(cfg, run, meta, context.get_trial_id())
            return
        hooks = train.TrainerHooks(callbacks=[_ReportToTune(meta["checkpoint_every"])])
        if meta["pbt"]:
            hooks.callbacks = [*hooks.callbacks, _ApplyMutatedLearningRate()]
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            train.fit(cfg, run=run, hooks=hooks, workdir=trial_folder(meta["path"], context.get_trial_id()))
            return
        with checkpoint.as_directory() as folder:
            hooks.resume_from = str(Path(folder) / CHECKPOINT_FILE)
            train.fit(cfg, run=run, hooks=hooks, workdir=trial_folder(meta["path"], context.get_trial_id()))


def _fit_distributed(cfg: ExperimentConfig, run: tracking.Run, meta: dict[str, Any], trial_id: str) -> None:
    """A multi-worker trial: a Ray Train TorchTrainer whose workers run the same runner under DDP; reports
    reach Tune through the Train-to-Tune bridge."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    gpu = meta["gpu"] > 0
    trainer = TorchTrainer(
        _ddp_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "run_id": run.run_id,
            "uri": run.uri,
            "gpu": gpu,
            "workdir": str(trial_folder(meta["path"], trial_id)),
        },
        scaling_config=ScalingConfig(
            num_workers=meta["workers"],
            use_gpu=gpu,
            resources_per_worker={"CPU": meta["cpu"], "GPU": meta["gpu"]},
        ),
        # A stable name: a resumed trial finds its Train run, and the workers their last checkpoint.
        run_config=RunConfig(
            name=f"train-{trial_id}",
            storage_path=meta["storage"],
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=meta["max_failures"]),
        ),
    )
    trainer.fit()


def _ddp_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; rank 0 alone writes to the trial's MLflow run."""
    import ray.train
    from plexlab.config import validate
    from ray.train.lightning import (
        RayDDPStrategy,
        RayLightningEnvironment,
        RayTrainReportCallback,
        prepare_trainer,
    )

    cfg = validate(loop_config["config"], source="<trial>")
    rank = ray.train.get_context().get_world_rank()
    run = None
    if rank == 0:
        from mlflow.tracking import MlflowClient

        run = tracking.Run(MlflowClient(loop_config["uri"]), loop_config["run_id"], loop_config["uri"])
    hooks = train.TrainerHooks(
        callbacks=[RayTrainReportCallback()],
        trainer_args={
            "strategy": RayDDPStrategy(),
            "plugins": [RayLightningEnvironment()],
            "devices": "auto",
            "accelerator": "gpu" if loop_config["gpu"] else "cpu",
        },
        prepare=prepare_trainer,
    )
    workdir = Path(loop_config["workdir"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        train.fit(cfg, run=run, track=rank == 0, hooks=hooks, workdir=workdir)
        return
    with checkpoint.as_directory() as folder:
        hooks.resume_from = str(Path(folder) / RayTrainReportCallback.CHECKPOINT_NAME)
        train.fit(cfg, run=run, track=rank == 0, hooks=hooks, workdir=workdir)


# ---- the driver ----------------------------------------------------------------------------------------


def trial_folder(sweep_path: str, trial_id: str) -> Path:
    """Where a trial's runner keeps its best-epoch checkpoint: beside Tune's results when they are on a
    filesystem (shared storage on a cluster), else on the trial's node. (Tune's own trial folder is not
    updated when an actor is reused, so trials would overwrite each other's files there.)"""
    if "://" in sweep_path:
        return Path(tempfile.gettempdir()) / "plexlab_trials" / sweep_path.rsplit("/", 1)[-1] / trial_id
    return Path(sweep_path) / "trial_files" / trial_id


def sweep_name(cfg: ExperimentConfig) -> str:
    """Stable across restarts of the same sweep file: the experiment name and a hash of what it trains."""
    body = {k: v for k, v in cfg.to_dict().items() if k != "tracking"}
    return f"{cfg.name}-{hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]}"


def _storage(cfg: ExperimentConfig, storage: str | None) -> str:
    where = storage or cfg.sweep.storage or DEFAULT_STORAGE
    return where if "://" in where else str(Path(where).expanduser().resolve())


def _start_ray(address: str | None) -> bool:
    """Join the given cluster (or RAY_ADDRESS), else start Ray here with its dashboard on 127.0.0.1 only.
    Returns whether this call started Ray (and so should stop it)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    # A stopped trial closes its MLflow run after Tune asks it to stop; give that time before an actor is
    # reused (Tune's default is 2 s).
    runtime_env = {"env_vars": {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "60", **_forwarded_env()}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        # "local", not None: without it Ray joins the last cluster `ray start` made on this machine, even a
        # stopped one (it hangs on the dead GCS); joining a cluster is for --address / RAY_ADDRESS alone.
        ray.init(
            address="local",
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env=runtime_env,
            log_to_driver=False,
        )
    return True


def _forwarded_env() -> dict[str, str]:
    """MLflow settings (credentials included) that trials on other nodes need too."""
    return {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}


def sweep(
    config: str | Path | dict | ExperimentConfig,
    overrides: dict[str, Any] | list[str] | None = None,
    *,
    address: str | None = None,
    storage: str | None = None,
    resume: bool = False,
) -> SweepResult:
    """Run the config's sweep (or resume it) and record it in MLflow; returns the best trial."""
    cfg = load(config, overrides)
    if cfg.sweep is None:
        raise ConfigError(cfg.source, "sweep", "missing: this file has no sweep section (use `plexlab fit`)")
    metric, mode = _objective(cfg)
    uri = tracking.resolve_uri(cfg.tracking.uri)
    tracking.check(uri)
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": uri})})
    name, root = sweep_name(cfg), _storage(cfg, storage)
    path = f"{root}/{name}"
    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise ConfigError(cfg.source, "--resume", f"no sweep to resume at {path}")
    if exists and not resume:
        raise ConfigError(cfg.source, "sweep", f"a sweep of this file already exists at {path}: add --resume")

    started = _start_ray(address)
    try:
        if started:
            _check_trial_fits(cfg)
        else:
            _check_tracking_reaches_every_node(cfg, uri)
        parent = _parent_run(cfg, name, uri, resume)
        parent.set_tags({PATH_TAG: path})
        with tracking.ending(parent):
            grid = _sweep_results(cfg, name, root, path, parent, metric, mode, resume)
            _close_trial_runs(parent, grid, metric, mode, path)
            return _summarize(cfg, grid, parent, metric, mode, path)
    finally:
        if started:
            ray.shutdown()


def _trial_shape(res: ResourcesConfig) -> dict[str, float]:
    """What Tune reserves for a trial's function: all of the trial's resources with one worker; a sliver of
    a CPU with several, whose Train workers hold the real resources (Tune refuses zero)."""
    return {"cpu": res.cpu, "gpu": res.gpu} if res.workers == 1 else {"cpu": DRIVER_CPU}


def _check_trial_fits(cfg: ExperimentConfig) -> None:
    """On Ray started here, a trial larger than the machine would wait forever: say so instead."""
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


def _objective(cfg: ExperimentConfig) -> tuple[str, str]:
    metric, mode = train.primary(cfg)
    return cfg.sweep.metric or metric, cfg.sweep.mode or (mode if not cfg.sweep.metric else "max")


def _parent_run(cfg: ExperimentConfig, name: str, uri: str, resume: bool) -> tracking.Run:
    if resume:
        found = tracking.find_run(uri, cfg.name, {SWEEP_TAG: name, "plexlab.kind": "sweep"})
        if found is not None:
            found.client.update_run(found.run_id, status="RUNNING")
            return found
    tags = {**train.run_tags(cfg), SWEEP_TAG: name, "plexlab.kind": "sweep"}
    parent = tracking.create_run(uri, cfg.name, run_name=f"sweep-{name}", tags=tags)
    parent.log_params({**cfg.flat_params(), **flatten({"sweep": cfg.to_dict()["sweep"]})})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sweep.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        (Path(tmp) / "search_space.json").write_text(json.dumps(cfg.sweep.space, indent=2))
        parent.log_artifact(Path(tmp))
    return parent


def _sweep_results(
    cfg: ExperimentConfig,
    name: str,
    root: str,
    path: str,
    parent: tracking.Run,
    metric: str,
    mode: str,
    resume: bool,
) -> tune.ResultGrid:
    res = cfg.sweep.resources
    meta = {
        "parent_run_id": parent.run_id,
        "cpu": res.cpu,
        "gpu": res.gpu,
        "workers": res.workers,
        "checkpoint_every": 1 if cfg.sweep.scheduler.name == "pbt" else cfg.sweep.checkpoint_every,
        "pbt": cfg.sweep.scheduler.name == "pbt",
        "storage": root,
        "path": path,
        "max_failures": cfg.sweep.max_failures,
    }
    base = {k: v for k, v in cfg.to_dict().items() if k != "sweep"}
    trainable = tune.with_parameters(run_trial, base=base, meta=meta)
    trainable = tune.with_resources(trainable, _trial_shape(res))
    if resume:
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        return tuner.fit()
    space = _grid_space(cfg.sweep.space) if cfg.sweep.search.name == "grid" else cfg.sweep.space
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(space),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            num_samples=1 if cfg.sweep.search.name == "grid" else cfg.sweep.num_samples,
            scheduler=scheduler(cfg, space),
            search_alg=search_algorithm(cfg, metric, mode),
            max_concurrent_trials=cfg.sweep.max_concurrent
            if cfg.sweep.search.name in ("random", "grid")
            else None,
            reuse_actors=res.workers == 1,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=root,
            failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=1,
        ),
    )
    return tuner.fit()


def _close_trial_runs(parent: tracking.Run, grid: tune.ResultGrid, metric: str, mode: str, path: str) -> None:
    """The safety net: a trial whose process was torn down before it closed its run (Tune does not wait
    long for a stopped trial) gets its best checkpoint from its folder and its status from Tune's verdict,
    so no child run stays RUNNING, and a trial stopped by the scheduler is not left FAILED by Lightning."""
    succeeded = {r.metrics.get("trial_id") for r in grid if not r.error and r.metrics}
    children = parent.client.search_runs(
        [parent.client.get_run(parent.run_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
        max_results=10000,
    )
    for child in children:
        trial = child.data.tags.get(TRIAL_TAG)
        run = tracking.Run(parent.client, child.info.run_id, parent.uri)
        best = trial_folder(path, trial) / "checkpoints" / "best.ckpt"
        if best.exists() and not parent.client.list_artifacts(run.run_id, "checkpoints"):
            run.log_artifact(best, "checkpoints")
        history = [m.value for m in parent.client.get_metric_history(run.run_id, metric)]
        if history and f"{metric}_best" not in child.data.metrics:
            run.log_metrics({f"{metric}_best": max(history) if mode == "max" else min(history)})
        unexplained_failure = child.info.status == "FAILED" and "plexlab.error" not in child.data.tags
        if child.info.status != "RUNNING" and not unexplained_failure:
            continue
        if trial not in succeeded:
            run.set_tags({"plexlab.error": "the trial failed; see Tune's error file for it"})
            run.end("FAILED")
        else:
            run.set_tags({tracking.STOP_TAG: "stopped early by the scheduler"})
            run.end("FINISHED")


def _summarize(
    cfg: ExperimentConfig,
    grid: tune.ResultGrid,
    parent: tracking.Run,
    metric: str,
    mode: str,
    path: str,
) -> SweepResult:
    """Best trial by its best epoch; results table, plot and best config logged to the parent run."""
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        values = history[metric].dropna() if history is not None and metric in history else None
        best = (
            None if values is None or values.empty else float(values.max() if mode == "max" else values.min())
        )
        params = flatten(result.config or {})
        rows.append(
            {"trial": result.metrics.get("trial_id"), **params, metric: best, "error": bool(result.error)}
        )
    scored = [r for r in rows if r[metric] is not None]
    if not scored:
        raise ConfigError(cfg.source, "sweep", f"no trial reported {metric}; see the trials' errors above")
    top = max(scored, key=lambda r: r[metric]) if mode == "max" else min(scored, key=lambda r: r[metric])
    best_result = next(r for r in grid if r.metrics.get("trial_id") == top["trial"])
    best_config = load(cfg.to_dict(), {k: top[k] for k in flatten(best_result.config or {})}).to_dict()
    # The runner's best-epoch checkpoint when the trial folder is reachable; else Tune's best reported one.
    local_best = trial_folder(path, top["trial"]) / "checkpoints" / "best.ckpt"
    best_checkpoint: Path | None = local_best if local_best.exists() else None
    if best_checkpoint is None and best_result.best_checkpoints:  # multi-worker trials report none to Tune
        tune_best = best_result.get_best_checkpoint(metric, mode)
        best_checkpoint = Path(tune_best.path) / CHECKPOINT_FILE if tune_best else None
    params = list(cfg.sweep.space)
    parent.log_metrics(
        {f"{metric}_best": top[metric], "trials": len(rows), "trials_failed": sum(r["error"] for r in rows)}
    )
    parent.set_tags({"plexlab.best_trial": top["trial"]})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "best_config.yaml").write_text(yaml.safe_dump(best_config, sort_keys=False))
        _write_table(rows, folder / "trials.csv")
        plots.metric_by_param(rows, metric, params, folder / f"{metric.replace('/', '_')}_by_param.png")
        parent.log_artifact(folder)
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


def _write_table(rows: list[dict[str, Any]], path: Path) -> None:
    import csv

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


# ---- what the CLI prints -------------------------------------------------------------------------------


def summary_table(result: SweepResult) -> Table:
    """The sweep's trials, best first, and where the best one is."""
    table = Table(title=f"{len(result.trials)} trials; best {result.metric} = {result.best_metric:.4f}")
    columns = list(dict.fromkeys(k for row in result.trials for k in row))
    for column in columns:
        table.add_column(column)
    reverse = result.mode == "max"
    ordered = sorted(
        result.trials,
        key=lambda r: (
            r[result.metric] is None,
            -(r[result.metric] or 0) if reverse else (r[result.metric] or 0),
        ),
    )
    for row in ordered:
        table.add_row(
            *(f"{v:.4g}" if isinstance(v, float) else str(v) for v in (row.get(c) for c in columns))
        )
    table.caption = f"MLflow parent run {result.parent_run_id}; best checkpoint {result.best_checkpoint}"
    return table


def status_table(
    config: str | Path | dict | ExperimentConfig,
    overrides: dict[str, Any] | list[str] | None = None,
    *,
    storage: str | None = None,
) -> Table:
    """Progress of a sweep (running, finished or interrupted), read from its MLflow child runs."""
    cfg = load(config, overrides)
    if cfg.sweep is None:
        raise ConfigError(cfg.source, "sweep", "missing: this file has no sweep section")
    name, uri = sweep_name(cfg), tracking.resolve_uri(cfg.tracking.uri)
    parent = tracking.find_run(uri, cfg.name, {SWEEP_TAG: name, "plexlab.kind": "sweep"})
    if parent is None:
        raise ConfigError(cfg.source, "sweep", f"no sweep {name} recorded in {uri}")
    rows = [r for r in runs_table.rows(cfg.name, uri) if r["parent"] == parent.run_id[:8]]
    table = Table(title=f"sweep {name}: {len(rows)} of {cfg.sweep.num_samples} trials recorded")
    columns = list(dict.fromkeys(k for row in rows for k in row if k not in ("run_id", "parent")))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(f"{v:.4g}" if isinstance(v, float) else str(v or "") for v in (row.get(c) for c in columns))
        )
    return table
