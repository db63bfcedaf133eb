"""The sweep section of an experiment file: its schema (search, scheduler, resources) and the checks of a
search-space distribution. Checked with the rest of the config before Ray starts."""

from __future__ import annotations

from typing import Any, Literal

from plexlab.errors import ConfigError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    """A config section that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid")


class SchedulerConfig(Strict):
    """A Ray Tune trial scheduler and its options (passed to the scheduler's constructor)."""

    name: Literal["fifo", "asha", "hyperband", "median", "pbt"] = "fifo"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3, gt=1)
    max_t: int | None = Field(None, ge=1)
    perturbation_interval: int = Field(2, ge=1)
    # PBT: which space keys it may mutate; default all of the space's keys.
    mutations: list[str] | None = None


class SearchConfig(Strict):
    """How trial configurations are chosen."""

    name: Literal["random", "grid", "optuna", "hyperopt"] = "random"


class ResourcesConfig(Strict):
    """Resources of one trial; `workers > 1` trains the trial with DDP over several Ray workers."""

    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)
    workers: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _whole_gpus_for_ddp(self) -> ResourcesConfig:
        if self.workers > 1 and self.gpu not in (0, 1):
            raise ValueError("with workers > 1, gpu is per worker and must be 0 or 1")
        return self


DISTRIBUTIONS = {"choice", "grid", "uniform", "loguniform", "randint", "quniform"}


class SweepConfig(Strict):
    """The search: space, scheduler, search algorithm, trial count and resources."""

    metric: str | None = None  # default: the model's primary metric
    mode: Literal["min", "max"] | None = None
    num_samples: int = Field(8, ge=1)
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    max_concurrent: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0)
    # Report every epoch, but write a resumable checkpoint only every n epochs (checkpoints cost I/O).
    checkpoint_every: int = Field(1, ge=1)
    # Tune checkpoints kept per trial (the newest): what a resumed or retried trial continues from. Default
    # 2, all under PBT: a trial that exploits another restores a checkpoint its donor would have pruned.
    checkpoints_kept: int | None = Field(None, ge=1)
    storage: str | None = None  # default: ./plexlab_sweeps; must be shared storage on a multi-host cluster
    # Train every trial once per value of one key ({data.split: [0, 1, 2]} or {seed: [0, 1, 2]}); trials are
    # ranked by the mean over the repeats of their best epoch.
    repeat: dict[str, list[Any]] | None = None
    start_from: str | None = None  # an earlier sweep's parent run id: its best configs are tried first
    time_budget_s: float | None = Field(None, gt=0)  # stop the sweep (running trials too) after this time

    @field_validator("repeat")
    @classmethod
    def _one_repeat_key(cls, repeat: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if repeat is None:
            return repeat
        if len(repeat) != 1:
            raise ValueError(f"takes one key and its list of values, got {len(repeat)} keys")
        key, values = next(iter(repeat.items()))
        section, _, arg = key.partition(".")
        if section not in ("model", "data", "trainer", "seed") or (section != "seed" and not arg):
            raise ValueError(f"{key} must name model.<arg>, data.<arg>, trainer.<arg> or seed")
        if len(values) < 2 or len({repr(v) for v in values}) != len(values):
            raise ValueError(f"{key} needs at least two distinct values, got {values}")
        return repeat

    @model_validator(mode="after")
    def _repeat_not_searched(self) -> SweepConfig:
        if self.repeat is not None and next(iter(self.repeat)) in self.space:
            raise ValueError(f"{next(iter(self.repeat))} is both searched (space) and repeated (repeat)")
        return self


DEFAULT_MAX_EPOCHS = 100  # Lightning's own default for trainer.max_epochs


def max_t(scheduler: SchedulerConfig, trainer: dict[str, Any]) -> int:
    """The scheduler's horizon in epochs: one past the last epoch by default, so that a trial that trains to
    the end finishes itself (and is tested) instead of being stopped by the scheduler at its final report."""
    return scheduler.max_t or int(trainer.get("max_epochs") or DEFAULT_MAX_EPOCHS) + 1


def check_schedule(scheduler: SchedulerConfig, trainer: dict[str, Any], source: str) -> None:
    """Scheduler settings that cannot work with the trainer's epochs are config errors, not Ray asserts."""
    horizon = max_t(scheduler, trainer)
    epochs = horizon - 1 if scheduler.max_t is None else scheduler.max_t
    where = "sweep.scheduler"
    if scheduler.name in ("asha", "median") and scheduler.grace_period > horizon:
        raise ConfigError(
            source,
            f"{where}.grace_period",
            f"{scheduler.grace_period} is past the last epoch a trial can reach ({horizon}:"
            " trainer.max_epochs + 1, or scheduler.max_t); lower it or train longer",
        )
    if scheduler.name == "pbt" and scheduler.perturbation_interval >= epochs:
        raise ConfigError(
            source,
            f"{where}.perturbation_interval",
            f"{scheduler.perturbation_interval} epochs: PBT would never perturb a trial that trains {epochs}",
        )
    if scheduler.name in ("asha", "hyperband") and scheduler.reduction_factor >= horizon:
        raise ConfigError(
            source,
            f"{where}.reduction_factor",
            f"{scheduler.reduction_factor:g} leaves no rung below {horizon}",
        )


def check_distribution(kind: str, args: Any, source: str, where: str) -> None:
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ConfigError(source, where, f"{kind} needs a non-empty list of values")
        return
    n = 3 if kind == "quniform" else 2
    if not isinstance(args, list) or len(args) != n or not all(isinstance(a, int | float) for a in args):
        raise ConfigError(
            source, where, f"{kind} needs [{'low, high, q' if n == 3 else 'low, high'}] numbers"
        )
    low, high = args[0], args[1]
    if low >= high:
        raise ConfigError(source, where, f"{kind} low ({low}) must be below high ({high})")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(source, where, "loguniform needs low > 0")
