"""Inside a sweep trial: the sampled params trained by the platform runner, one worker or DDP over several.

A trial reports each epoch to Tune after the runner's best-epoch checkpoint has seen it, writes into its own
MLflow child run (found again when the trial resumes or is retried), and keeps its files in a trial folder
that Tune's actor reuse cannot mix up.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import ray
import torch
from plexlab import run_logger, run_logs, schema, tracking, train
from plexlab.config import ExperimentConfig, flatten, load
from plexlab.errors import PlexlabError
from ray import tune

CHECKPOINT_FILE = "checkpoint.ckpt"


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a sweep needs besides its sampled params; sent once to the trial processes."""

    base: dict[str, Any]  # the resolved experiment config without its sweep section
    parent_run_id: str
    cpu: float  # per worker
    gpu: float  # per worker
    workers: int
    checkpoint_every: int  # epochs between resumable Tune checkpoints
    pbt: bool
    storage: str  # Tune's storage root
    path: str  # this sweep's folder under it
    max_failures: int
    metric: str = ""  # what the sweep ranks by (a repeated trial reports its mean)
    repeat: dict[str, list[Any]] | None = None  # sweep.repeat: one key and its values


def trial_folder(sweep_path: str, trial_id: str) -> Path:
    """Where a trial's runner keeps its best-epoch checkpoint: beside Tune's results when they are on a
    filesystem (shared storage on a cluster), else on the trial's node. (Tune's own trial folder is not
    updated when an actor is reused, so trials would overwrite each other's files there.)"""
    if "://" in sweep_path:
        return private_temp_root() / sweep_path.rsplit("/", 1)[-1] / trial_id
    return Path(sweep_path) / "trial_files" / trial_id


def private_temp_root() -> Path:
    """This user's folder for trial files under the temp dir: mode 700, owned by the user, not a link, so that
    nobody else can read a trial's checkpoints or plant one. Per user, not random: the driver and the trials'
    nodes must name the same folder."""
    root = Path(tempfile.gettempdir()) / f"plexlab_trials-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise PlexlabError(f"{root} is not a private folder of this user (mode 700): remove it and run again")
    return root


class ReportToTune(pl.Callback):
    """Report every epoch's metrics to Tune after the best checkpoint is saved; attach a resumable
    checkpoint every `every` epochs. (Ray's own callback reports before Lightning's ModelCheckpoint runs,
    so a trial stopped at that report would lose its best epoch.)"""

    def __init__(self, every: int) -> None:
        self.every = every

    def epoch_metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        """What this epoch reports (repeats replace the sweep metric by its mean over the repeats)."""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics["epoch"] = trainer.current_epoch
        return metrics

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = self.epoch_metrics(trainer)
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        if (trainer.current_epoch + 1) % self.every and not last:
            tune.report(metrics)
            return
        run_logger.flush_loggers(trainer)  # a trial resumed from this checkpoint must not miss earlier points
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save_checkpoint(Path(tmp) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


class _ApplyMutatedLearningRate(pl.Callback):
    """PBT: a trial restored from another's checkpoint inherits that trial's optimizer state, rates included.
    Its own (mutated) `lr` scales every group of every optimizer by own / inherited `lr`, so the ratios the
    model sets between its groups (protein_mmcl's ESM rate, hypergcl's generator rate) stay, and a learning
    rate schedule continues from the scaled rates."""

    def __init__(self) -> None:
        self.inherited_lr: float | None = None

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.inherited_lr = checkpoint.get("hyper_parameters", {}).get("lr")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        own, inherited, self.inherited_lr = pl_module.hparams.get("lr"), self.inherited_lr, None
        if own is None or not inherited or own == inherited:
            return  # a fresh start, the trial's own checkpoint, or a model without `lr`
        factor = float(own) / float(inherited)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= factor
                if "initial_lr" in group:  # where a scheduler restarts from
                    group["initial_lr"] *= factor
        for config in trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "base_lrs"):
                config.scheduler.base_lrs = [rate * factor for rate in config.scheduler.base_lrs]


def _trial_run(cfg: ExperimentConfig, parent_run_id: str, trial_id: str, trial_name: str) -> tracking.Run:
    """The trial's child run: found again when the trial resumes or is retried, created otherwise."""
    uri = cfg.tracking.uri
    run = tracking.find_run(uri, cfg.name, {schema.TRIAL_ID: trial_id, schema.PARENT_RUN_ID: parent_run_id})
    if run is not None:
        run.reopen()
        return run
    tags = {
        **train.run_tags(cfg, kind=schema.TRIAL),
        schema.TRIAL_ID: trial_id,
        schema.TRIAL_NAME: trial_name,
    }
    return tracking.create_run(uri, cfg.name, run_name=trial_id, tags=tags, parent_run_id=parent_run_id)


def run_trial(params: dict[str, Any], *, spec: TrialSpec) -> None:
    """One Tune trial: the sampled params applied to the base config, trained by the platform runner."""
    context = tune.get_context()
    trial_id = context.get_trial_id()
    cfg = load(spec.base, flatten(params))
    torch.set_num_threads(max(1, int(spec.cpu)))
    run = _trial_run(cfg, spec.parent_run_id, trial_id, context.get_trial_name())
    run.set_tags({schema.RAY_NODE: ray.get_runtime_context().get_node_id()})
    workdir = trial_folder(spec.path, trial_id)
    with tracking.ending(run, sigterm_is_stop=True), run_logs.trial_log(run, workdir):
        if spec.workers > 1:
            _fit_distributed(cfg, run, spec, trial_id)
            return
        if spec.repeat is not None:
            from plexlab import sweep_repeats  # it builds on this module's report callback

            sweep_repeats.run_repeats(cfg, run, spec, trial_id)
            return
        callbacks: list[pl.Callback] = [ReportToTune(spec.checkpoint_every)]
        if spec.pbt:
            callbacks.append(_ApplyMutatedLearningRate())
        hooks = train.TrainerHooks(callbacks=callbacks)
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            train.fit(cfg, run=run, hooks=hooks, workdir=workdir)
            return
        with checkpoint.as_directory() as folder:
            hooks.resume_from = str(Path(folder) / CHECKPOINT_FILE)
            train.fit(cfg, run=run, hooks=hooks, workdir=workdir)


def _fit_distributed(cfg: ExperimentConfig, run: tracking.Run, spec: TrialSpec, trial_id: str) -> None:
    """A multi-worker trial: a Ray Train TorchTrainer whose workers run the same runner under DDP; reports
    reach Tune through the Train-to-Tune bridge."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    gpu = spec.gpu > 0
    trainer = TorchTrainer(
        _ddp_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "run_id": run.run_id,
            "uri": run.uri,
            "gpu": gpu,
            "workdir": str(trial_folder(spec.path, trial_id)),
        },
        scaling_config=ScalingConfig(
            num_workers=spec.workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": spec.cpu, "GPU": spec.gpu},
        ),
        # A stable name: a resumed trial finds its Train run, and the workers their last checkpoint.
        run_config=RunConfig(
            name=f"train-{trial_id}",
            storage_path=spec.storage,
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=spec.max_failures),
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
    run = tracking.Run.attach(loop_config["uri"], loop_config["run_id"]) if rank == 0 else None
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
