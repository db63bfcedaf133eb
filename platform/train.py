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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from plexlab import plots, registry, tracking
from plexlab.config import ExperimentConfig, flatten, load
from plexlab.errors import ConfigError, DataError

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
    cls = registry.model_class(cfg.model_name)
    return getattr(cls, "primary_metric", "val/loss"), getattr(cls, "primary_mode", "min")


def build(cfg: ExperimentConfig) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """The data module (set up for fit) and the model, sized by what the data says."""
    try:
        dm = registry.datamodule_class(cfg.data_name)(**cfg.data_args())
        dm.setup("fit")
    except DataError as exc:
        if exc.source == "data" or exc.source.startswith("data."):  # a setting: name the experiment file
            raise ConfigError(cfg.source, exc.source, exc.problem) from None
        raise
    model_cls = registry.model_class(cfg.model_name)
    accepted = registry.init_parameters(model_cls)
    derived = dm.model_kwargs() if hasattr(dm, "model_kwargs") else {}
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
        return dm, model_cls(**args)
    except DataError as exc:  # a setting the model cannot use (pretrained weights by name...): name the file
        if exc.source.startswith(("model.", "data.")):
            raise ConfigError(cfg.source, exc.source, exc.problem) from None
        raise


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
) -> FitResult:
    """Train, test on the best checkpoint, record everything in MLflow; see the module docstring.

    `run` writes into an existing MLflow run (a sweep trial's child run); `track=False` records nothing (the
    non-zero ranks of a multi-worker trial).
    """
    cfg = load(config, overrides)
    hooks = hooks or TrainerHooks()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    uri = tracking.resolve_uri(cfg.tracking.uri)
    in_sweep = run is not None  # a trial's run (also rank 0 of a DDP trial): SIGTERM is Ray stopping it
    if track and run is None:
        tracking.check(uri)
    dm, model = build(cfg)
    metric, mode = primary(cfg)
    if track and run is None:
        run = tracking.create_run(
            uri, cfg.name, run_name=cfg.tracking.tags.get("run_name"), tags=run_tags(cfg)
        )
    workdir = Path(workdir or RUNS_DIR / cfg.name / (run.run_id if run else time.strftime("%Y%m%d-%H%M%S")))
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=workdir / "checkpoints", filename="best", monitor=metric, mode=mode, save_top_k=1
    )
    ending = tracking.ending(run, sigterm_is_stop=in_sweep) if run else contextlib.nullcontext()
    with ending, tracking.failures_named(uri):
        return _fit(cfg, dm, model, run, workdir, hooks, checkpoint, metric)


def _fit(
    cfg: ExperimentConfig,
    dm: pl.LightningDataModule,
    model: pl.LightningModule,
    run: tracking.Run | None,
    workdir: Path,
    hooks: TrainerHooks,
    checkpoint: pl.callbacks.ModelCheckpoint,
    metric: str,
) -> FitResult:
    if run is not None:
        # The resolved config plus every default and data-derived size the classes were built with.
        hparams = {"model": dict(model.hparams), "data": dict(getattr(dm, "hparams", {}))}
        run.log_params({**cfg.flat_params(), **flatten(hparams)})
        _log_config(run, cfg)
    trainer = make_trainer(
        cfg,
        workdir=workdir,
        logger=run.logger(cfg.name) if run else None,
        hooks=hooks,
        checkpoint=checkpoint,
        steps_per_epoch=_steps_per_epoch(dm),
    )
    if run is not None and trainer.is_global_zero:
        where = {"plexlab.world_size": trainer.world_size, "plexlab.host": socket.gethostname()}
        if hooks.resume_from:
            where["plexlab.resumed_from"] = hooks.resume_from
        run.set_tags(where)
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=hooks.resume_from, weights_only=True)
    except SystemExit:  # a scheduler stopped the trial: its best checkpoint is still worth keeping
        if run is not None and trainer.is_global_zero:
            _log_outcome(run, cfg, checkpoint, metric)
        raise
    best = checkpoint.best_model_path or None
    if not best:
        log.warning("%s was never logged: testing the last weights, not the best epoch", metric)
    results = trainer.test(model, datamodule=dm, ckpt_path=best, verbose=False, weights_only=True)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    best_score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    if best_score is not None:
        metrics[f"{metric}_best"] = best_score
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


def _steps_per_epoch(dm: pl.LightningDataModule) -> int | None:
    try:
        return len(dm.train_dataloader())
    except Exception:  # an iterable loader without a length
        return None


def test(
    config: str | Path | dict | ExperimentConfig,
    ckpt: str | Path,
    overrides: dict[str, Any] | list[str] | None = None,
    *,
    track: bool = True,
) -> FitResult:
    """Evaluate a checkpoint on the test split; recorded as its own MLflow run (tag plexlab.kind=test)."""
    cfg = load(config, overrides)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    uri = tracking.resolve_uri(cfg.tracking.uri)
    if track:
        tracking.check(uri)
    dm, model = build(cfg)
    load_weights(model, Path(ckpt), cfg.source)
    run = None
    if track:
        tags = {**run_tags(cfg), "plexlab.kind": "test", "plexlab.checkpoint": str(Path(ckpt).resolve())}
        run = tracking.create_run(uri, cfg.name, tags=tags)
    workdir = Path(tempfile.mkdtemp(prefix="plexlab-test-"))
    with tracking.ending(run) if run else contextlib.nullcontext():
        if run is not None:
            run.log_params(cfg.flat_params())
        trainer = make_trainer(cfg, workdir=workdir, logger=run.logger(cfg.name) if run else None)
        results = trainer.test(model, datamodule=dm, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    metric, _ = primary(cfg)
    return FitResult(metrics, run.run_id if run else None, Path(ckpt), cfg, uri if run else None, metric)


def predict(
    config: str | Path | dict | ExperimentConfig,
    ckpt: str | Path,
    overrides: dict[str, Any] | list[str] | None = None,
) -> tuple[list[str], np.ndarray, pl.LightningDataModule]:
    """Embeddings (or predictions) of every sample, with the sample ids in the same order."""
    cfg = load(config, overrides)
    dm, model = build(cfg)
    load_weights(model, Path(ckpt), cfg.source)
    trainer = make_trainer(cfg, workdir=Path(tempfile.mkdtemp(prefix="plexlab-embed-")))
    if not _overrides(model, "predict_step"):
        if not hasattr(model, "embed"):
            raise ConfigError(
                cfg.source, "model.name", f"{cfg.model_name} has neither embed nor predict_step"
            )
        model.predict_step = lambda batch, batch_idx, dataloader_idx=0: model.embed(batch)
    dm.setup("predict")
    parts = trainer.predict(model, datamodule=dm)
    out = torch.cat([p.detach().float().cpu() for p in parts]).numpy()
    return dm.sample_ids(), out, dm


def _overrides(model: pl.LightningModule, method: str) -> bool:
    return getattr(type(model), method) is not getattr(pl.LightningModule, method)


def load_weights(model: pl.LightningModule, ckpt: Path, source: str) -> None:
    """Load a Lightning checkpoint's weights without unpickling arbitrary objects."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(source, "--ckpt", f"no such checkpoint: {ckpt}") from None
    except Exception as exc:
        problem = f"{ckpt} is not a loadable checkpoint: {exc}".splitlines()[0]
        raise ConfigError(source, "--ckpt", problem) from None
    weights = state.get("state_dict", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise ConfigError(source, "--ckpt", f"{ckpt} holds no state_dict")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(source, "--ckpt", f"{ckpt} does not fit this model config: {first}") from None


def run_tags(cfg: ExperimentConfig) -> dict[str, Any]:
    """The tags every run of this config carries: model, data, config hash and file, git commit."""
    return {
        **{k: v for k, v in cfg.tracking.tags.items() if k != "run_name"},
        "plexlab.model": cfg.model_name,
        "plexlab.data": cfg.data_name,
        "plexlab.config_hash": cfg.config_hash(),
        "plexlab.config_file": cfg.source,
        "mlflow.source.git.commit": cfg.git_commit,
    }


def _log_config(run: tracking.Run, cfg: ExperimentConfig) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        run.log_artifact(path)


def _log_outcome(
    run: tracking.Run, cfg: ExperimentConfig, checkpoint: pl.callbacks.ModelCheckpoint, metric: str
) -> None:
    """The best checkpoint and the learning curves, logged as artifacts."""
    if checkpoint.best_model_path and Path(checkpoint.best_model_path).exists():
        run.log_artifact(Path(checkpoint.best_model_path), "checkpoints")
    if checkpoint.best_model_score is not None:
        run.log_metrics({f"{metric}_best": float(checkpoint.best_model_score)})
    keys = [k for k in run.client.get_run(run.run_id).data.metrics if k.startswith(("train/", "val/"))]
    with tempfile.TemporaryDirectory() as tmp:
        plot = plots.learning_curves(
            tracking.metric_history(run, keys), Path(tmp) / "learning_curves.png", title=cfg.name
        )
        if plot is not None:
            run.log_artifact(plot, "plots")


def _export(model: pl.LightningModule, dm: pl.LightningDataModule, run: tracking.Run) -> None:
    """The model's own tables and plots (`export_artifacts`), if it has any."""
    export = getattr(model, "export_artifacts", None)
    if export is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        export(dm, Path(tmp))
        if any(Path(tmp).iterdir()):
            run.log_artifact(Path(tmp), "model")
