"""`plexlab fit --resume`: continue a killed or preempted fit from its last checkpoint, in its MLflow run.

A fit keeps `last.ckpt` in its run folder (plexlab_runs/<experiment>/<run id>/checkpoints) and saves it when
it gets SIGTERM. Resuming reopens the run and skips any metric point the run already holds (an epoch cut short
by the kill is trained again and would otherwise be logged twice), so every epoch is logged once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from plexlab import schema, tracking
from plexlab.config import ExperimentConfig
from plexlab.errors import ConfigError

LAST = "last"  # `--resume last`: the experiment's newest unfinished fit
UNFINISHED = ("RUNNING", "KILLED", "FAILED")
CHECKPOINTS = "checkpoints"  # the run folder's checkpoint folder


def last_checkpoint(workdir: Path) -> Path:
    """Where a fit keeps (and a resumed fit looks for) its last checkpoint."""
    return workdir / CHECKPOINTS / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


def find_run(uri: str, cfg: ExperimentConfig, resume: str) -> tracking.RunRecord:
    """The fit run to continue: by id, or the newest unfinished one; refused when it finished or trained
    another config."""
    fits = tracking.search(uri, cfg.name, {schema.KIND: schema.FIT})
    if resume == LAST:
        found = next((r for r in fits if r.status in UNFINISHED), None)
        if found is None:
            raise ConfigError(cfg.source, "--resume", f"{cfg.name} has no unfinished fit run in {uri}")
    else:
        found = next((r for r in fits if r.run_id == resume), None)
        if found is None:
            raise ConfigError(cfg.source, "--resume", f"no fit run {resume} in experiment {cfg.name} ({uri})")
        if found.status not in UNFINISHED:
            raise ConfigError(cfg.source, "--resume", f"run {resume} is {found.status}: nothing to continue")
    trained = found.tags.get(schema.CONFIG_HASH)
    if trained != cfg.config_hash():
        raise ConfigError(
            cfg.source,
            "--resume",
            f"run {found.run_id} trained another config (hash {trained}, this one {cfg.config_hash()});"
            " resume it with the file and --set values it started with",
        )
    return found


def reopen(uri: str, record: tracking.RunRecord) -> tracking.Run:
    """The run, RUNNING again, without the error its interrupted attempt left."""
    run = tracking.Run.attach(uri, record.run_id)
    run.reopen()
    if schema.ERROR in record.tags:
        run.client.delete_tag(run.run_id, schema.ERROR)
    return run


def checkpoint_to_resume(cfg: ExperimentConfig, workdir: Path, run_id: str) -> Path:
    path = last_checkpoint(workdir)
    if not path.is_file():
        raise ConfigError(
            cfg.source,
            "--resume",
            f"run {run_id} left no last checkpoint at {path} (resume from the folder the fit ran in)",
        )
    return path


def skip_logged(logger: Any, run: tracking.Run) -> Any:
    """Lightning's logger for a resumed run, dropping the points (metric, step) the run already has."""
    logged = {key: max(step for step, _ in run.history(key)) for key in run.record().metrics}
    write = logger.log_metrics

    def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
        fresh = {k: v for k, v in metrics.items() if (step or 0) > logged.get(k, -1)}
        if fresh:
            write(fresh, step)

    logger.log_metrics = log_metrics
    return logger
