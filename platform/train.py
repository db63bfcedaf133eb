"""The training runner: one function trains any registered model on any registered data module.

`fit` builds both from a validated config, seeds everything, runs `lightning.Trainer` fit then test on the
best checkpoint (by the model's primary metric), and records the run in MLflow. `plexlab fit`, the Python API
and every sweep trial go through it, so a trial trains exactly like a single run.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException
from plexlab import contract, fit_resume, plots, registry, run_observe, schema, tracking
from plexlab.config import ExperimentConfig, flatten, load
from plexlab.datamodules.errors import first_line
from plexlab.errors import ConfigError, DataError
from plexlab.fit_config import EarlyStoppingConfig

log = logging.getLogger(__name__)

RUNS_DIR = Path("plexlab_runs")


@dataclass
class FitResult:
    """What a fit produced: test metrics, best validation score, MLflow run and best checkpoint."""

    metrics: dict[str, float]
    run_id: str | None
    checkpoint: Path | None
    config: ExperimentConfig
    tracking_uri: str | None = None
    primary_metric: str = ""
    best_score: float | None = None


@dataclass
class TrainerHooks:
    """How a caller (a sweep trial, a DDP worker) adapts the Trainer: extra callbacks and arguments."""

    callbacks: Sequence[pl.Callback] = ()
    trainer_args: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[pl.Trainer], pl.Trainer] | None = None
    resume_from: str | None = None  # a Lightning checkpoint to continue from


def primary(cfg: ExperimentConfig) -> tuple[str, str]:
    """The metric (and mode) that picks the best epoch: the model's primary metric."""
    return contract.primary(registry.model_class(cfg.model_name))


def build(cfg: ExperimentConfig) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """The data module (set up for fit) and the model, sized by what the data says."""
    try:
        dm = construct(cfg.source, "data", registry.datamodule_class(cfg.data_name), cfg.data_args())
        dm.setup("fit")
    except DataError as exc:
        if exc.source == "data" or exc.source.startswith(("data.", "model.")):  # a setting: name the file
            raise ConfigError(cfg.source, exc.source, exc.problem) from None
        raise
    model_cls = registry.model_class(cfg.model_name)
    accepted = registry.init_parameters(model_cls)
    derived = dm.model_kwargs()
    args = cfg.model_args()
    for key, value in derived.items():
        if key not in accepted:
            continue  # a data module serves several models; each takes what it needs
        if key in args and args[key] != value:
            raise ConfigError(cfg.source, f"model.{key}", f"is {args[key]!r} but the data gives {value!r}")
        args[key] = value
    missing = [k for k, p in accepted.items() if p.default is p.empty and k not in args]
    if missing:
        raise ConfigError(cfg.source, f"model.{missing[0]}", "required and not provided by the data module")
    try:
        return dm, construct(cfg.source, "model", model_cls, args)
    except DataError as exc:
        if exc.source.startswith(("model.", "data.")):  # a setting: name the file
            raise ConfigError(cfg.source, exc.source, exc.problem) from None
        raise


def construct(source: str, section: str, cls: type, args: dict[str, Any]) -> Any:
    """A model or data module from its config section. A ValueError from its constructor is a setting the
    class refused (settings that do not fit together): one line naming the key it mentions, or the section."""
    try:
        return cls(**args)
    except DataError:  # already names its setting or file
        raise
    except ValueError as exc:
        message = first_line(exc, 300)
        named = [k for k in args if k in message]
        key = f"{section}.{max(named, key=len)}" if named else section
        raise ConfigError(source, key, message) from None


def make_trainer(
    cfg: ExperimentConfig,
    *,
    workdir: Path,
    logger: Any = None,
    hooks: TrainerHooks | None = None,
    checkpoint: pl.callbacks.ModelCheckpoint | None = None,
    steps_per_epoch: int | None = None,
) -> pl.Trainer:
    """A Trainer from the config's trainer section plus what the runner owns (logger, callbacks, paths)."""
    hooks = hooks or TrainerHooks()
    on_terminal = sys.stderr.isatty()
    callbacks: list[pl.Callback] = [*hooks.callbacks]
    if checkpoint is not None:
        callbacks.append(checkpoint)
    if on_terminal:
        callbacks.append(pl.callbacks.RichProgressBar())
    args: dict[str, Any] = {
        # At least once an epoch: full-batch models take a single step per epoch.
        "log_every_n_steps": max(1, min(50, steps_per_epoch or 50)),
        "enable_progress_bar": on_terminal,
        "enable_model_summary": on_terminal,
        **cfg.trainer,
        **hooks.trainer_args,
    }
    trainer = pl.Trainer(
        default_root_dir=str(workdir),
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_checkpointing=checkpoint is not None,
        **args,
    )
    return hooks.prepare(trainer) if hooks.prepare else trainer


def fit(
    config: str | Path | dict | ExperimentConfig,
    overrides: dict[str, Any] | list[str] | None = None,
    *,
    run: tracking.Run | None = None,
    track: bool = True,
    hooks: TrainerHooks | None = None,
    workdir: Path | None = None,
    allow_tracking_uri: bool = False,
    resume: str | None = None,
) -> FitResult:
    """Train, test on the best checkpoint, record everything in MLflow; see the module docstring.

    `run` writes into an existing MLflow run (a sweep trial's child run); `track=False` records nothing (the
    non-zero ranks of a multi-worker trial). `allow_tracking_uri` sends runs to a server the experiment
    file names even where that is not the user's own (see `tracking.trusted_uri`). `resume` (a run id, or
    "last") continues an unfinished fit from its last checkpoint into the same run (see fit_resume).
    """
    cfg = load(config, overrides)
    hooks = hooks or TrainerHooks()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    in_sweep = run is not None  # a trial's run (also rank 0 of a DDP trial): SIGTERM is Ray stopping it
    # A trial's driver already vetted the URI; a fit of its own vets the file's.
    if in_sweep:
        uri = tracking.resolve_uri(cfg.tracking.uri)
    else:
        uri = tracking.trusted_uri(cfg.tracking.uri, cfg.source, allow_other_host=allow_tracking_uri)
    if track and run is None:
        tracking.check(uri)
    resumed = fit_resume.find_run(uri, cfg, resume) if resume and not in_sweep else None
    if resumed is not None:
        workdir = Path(workdir or RUNS_DIR / cfg.name / resumed.run_id)
        ckpt = fit_resume.checkpoint_to_resume(cfg, workdir, resumed.run_id)
        hooks = replace(hooks, resume_from=str(ckpt))
    dm, model = build(cfg)
    metric, mode = primary(cfg)
    if resumed is not None:
        run = fit_resume.reopen(uri, resumed)
    elif track and run is None:
        run = tracking.create_run(
            uri, cfg.name, run_name=cfg.tracking.tags.get("run_name"), tags=run_tags(cfg, kind=schema.FIT)
        )
    workdir = Path(workdir or RUNS_DIR / cfg.name / (run.run_id if run else time.strftime("%Y%m%d-%H%M%S")))
    # Saved when validation ends, before any on_train_epoch_end hook: a sweep trial reports the epoch to Tune
    # there, and a scheduler that stops the trial at that report must not cost it its best epoch.
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=workdir / fit_resume.CHECKPOINTS,
        filename="best",
        monitor=metric,
        mode=mode,
        save_top_k=cfg.checkpoint.save_top_k,
        # A fit keeps its last epoch to resume from; a sweep trial resumes from Tune's checkpoints instead.
        save_last=cfg.checkpoint.save_last if cfg.checkpoint.save_last is not None else not in_sweep,
        every_n_epochs=cfg.checkpoint.every_n_epochs,
        save_on_train_epoch_end=False,
    )
    if cfg.early_stopping is not None:
        hooks = replace(
            hooks, callbacks=[*hooks.callbacks, _early_stopping(cfg.early_stopping, metric, mode)]
        )
    ending = tracking.ending(run, sigterm_is_stop=in_sweep) if run else contextlib.nullcontext()
    with ending, tracking.failures_named(uri), run_observe.observing(run, cfg):
        return _fit(cfg, dm, model, run, workdir, hooks, checkpoint, metric, in_sweep=in_sweep)


def _fit(
    cfg: ExperimentConfig,
    dm: pl.LightningDataModule,
    model: pl.LightningModule,
    run: tracking.Run | None,
    workdir: Path,
    hooks: TrainerHooks,
    checkpoint: pl.callbacks.ModelCheckpoint,
    metric: str,
    *,
    in_sweep: bool,
) -> FitResult:
    if run is not None:
        # The resolved config plus every default and data-derived size the classes were built with.
        hparams = {"model": dict(model.hparams), "data": dict(dm.hparams)}
        run.log_params({**cfg.flat_params(), **flatten(hparams)})
        _log_config(run, cfg)
    # The runner logs both sections above; Lightning's own merge of the two refuses a key both hold with
    # different values (unitednet's and the single-cell data's `modalities`), so it must not run.
    dm._log_hyperparams = False
    logger = run.logger(cfg.name) if run else None
    if logger is not None and hooks.resume_from and not in_sweep:
        logger = fit_resume.skip_logged(logger, run)
    trainer = make_trainer(
        cfg,
        workdir=workdir,
        logger=logger,
        hooks=hooks,
        checkpoint=checkpoint,
        steps_per_epoch=_steps_per_epoch(dm),
    )
    if run is not None and trainer.is_global_zero:
        where = {schema.WORLD_SIZE: trainer.world_size, schema.HOST: socket.gethostname()}
        if hooks.resume_from:
            where[schema.RESUMED_FROM] = hooks.resume_from
        run.set_tags(where)
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=hooks.resume_from, weights_only=True)
    except SystemExit as exc:
        if isinstance(exc, SIGTERMException) and not in_sweep:  # preempted: keep it for `fit --resume`
            trainer.save_checkpoint(fit_resume.last_checkpoint(workdir))
        elif run is not None and trainer.is_global_zero:  # a scheduler stopped the trial: keep its best
            _log_outcome(run, cfg, checkpoint, metric)
        raise
    if run is not None and trainer.is_global_zero:
        _record_early_stop(run, trainer)  # before testing the best checkpoint restores the callbacks' state
    best = checkpoint.best_model_path or None
    if not best:
        log.warning("%s was never logged: testing the last weights, not the best epoch", metric)
    results = trainer.test(model, datamodule=dm, ckpt_path=best, verbose=False, weights_only=True)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    best_score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    if best_score is not None:
        metrics[schema.best(metric)] = best_score
    if run is not None and trainer.is_global_zero:
        _log_outcome(run, cfg, checkpoint, metric)
        _export(model, dm, run)
    return FitResult(
        metrics=metrics,
        run_id=run.run_id if run else None,
        checkpoint=Path(best) if best else None,
        config=cfg,
        tracking_uri=run.uri if run else None,
        primary_metric=metric,
        best_score=best_score,
    )


def _early_stopping(settings: EarlyStoppingConfig, metric: str, mode: str) -> pl.callbacks.EarlyStopping:
    """Checked when validation ends, like the checkpoint, so both see the same epochs."""
    return pl.callbacks.EarlyStopping(
        monitor=settings.metric or metric,
        mode=settings.mode or (mode if settings.metric is None else "max"),
        patience=settings.patience,
        min_delta=settings.min_delta,
        check_on_train_epoch_end=False,
    )


def _record_early_stop(run: tracking.Run, trainer: pl.Trainer) -> None:
    """The epoch early stopping ended the fit at, if it did."""
    stopper = trainer.early_stopping_callback
    if stopper is not None and stopper.stopped_epoch > 0:
        run.log_metrics({schema.STOPPED_EPOCH: stopper.stopped_epoch})
        run.set_tags({schema.STOPPED: f"early stopping: no improvement for {stopper.patience} epochs"})


def _steps_per_epoch(dm: pl.LightningDataModule) -> int | None:
    try:
        return len(dm.train_dataloader())
    except Exception:  # an iterable loader without a length
        return None


def run_tags(cfg: ExperimentConfig, *, kind: schema.Kind) -> dict[str, Any]:
    """The tags every run of this config carries: its kind, model, data, config hash and file, git commit."""
    return {
        **{k: v for k, v in cfg.tracking.tags.items() if k != "run_name"},
        schema.KIND: kind,
        schema.MODEL: cfg.model_name,
        schema.DATA: cfg.data_name,
        schema.CONFIG_HASH: cfg.config_hash(),
        schema.CONFIG_FILE: cfg.source,
        schema.GIT_COMMIT: cfg.git_commit,
    }


def _log_config(run: tracking.Run, cfg: ExperimentConfig) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(cfg.public_dict(), sort_keys=False))
        run.log_artifact(path)


def _log_outcome(
    run: tracking.Run, cfg: ExperimentConfig, checkpoint: pl.callbacks.ModelCheckpoint, metric: str
) -> None:
    """The best checkpoint and the learning curves, logged as artifacts."""
    if checkpoint.best_model_path and Path(checkpoint.best_model_path).exists():
        run.log_artifact(Path(checkpoint.best_model_path), "checkpoints")
    if checkpoint.best_model_score is not None:
        run.log_metrics({schema.best(metric): float(checkpoint.best_model_score)})
    keys = [k for k in run.record().metrics if k.startswith(("train/", "val/"))]
    with tempfile.TemporaryDirectory() as tmp:
        plot = plots.learning_curves(
            tracking.metric_history(run, keys), Path(tmp) / "learning_curves.png", title=cfg.name
        )
        if plot is not None:
            run.log_artifact(plot, "plots")


def _export(model: pl.LightningModule, dm: pl.LightningDataModule, run: tracking.Run) -> None:
    """The model's own tables and plots (`export_artifacts`), if it has any."""
    if not isinstance(model, contract.ExportsArtifacts):
        return
    with tempfile.TemporaryDirectory() as tmp:
        model.export_artifacts(dm, Path(tmp))
        if any(Path(tmp).iterdir()):
            run.log_artifact(Path(tmp), "model")
