"""The sections of an experiment file that shape a fit besides the model, the data and the Trainer: where it
is recorded, when it stops early, which checkpoints it keeps."""

from __future__ import annotations

from typing import Literal

from plexlab.sweep_config import Strict
from pydantic import Field


class TrackingConfig(Strict):
    """Where runs are recorded: `uri: null` is the embedded SQLite store in the working directory.
    `system_metrics` samples CPU, memory, disk, network and (with pynvml) GPU use into every fit's and
    trial's run as `system/*` metrics, every `system_metrics_interval` seconds."""

    uri: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    system_metrics: bool = True
    system_metrics_interval: float = Field(10.0, gt=0)


class EarlyStoppingConfig(Strict):
    """Stop a fit when its metric has not improved by `min_delta` for `patience` validation epochs; the
    metric and mode default to the model's primary ones."""

    patience: int = Field(ge=1)
    min_delta: float = Field(0.0, ge=0)
    metric: str | None = None
    mode: Literal["min", "max"] | None = None


class CheckpointConfig(Strict):
    """Which checkpoints a fit keeps: the best `save_top_k` by the primary metric (the best is what the run
    tests and logs), and with `save_last` the last epoch too (what `plexlab fit --resume` continues from).
    `save_last: null` (the default) keeps it for fits and not for sweep trials, which Tune checkpoints."""

    save_top_k: int = Field(1, ge=1)
    save_last: bool | None = None
    every_n_epochs: int = Field(1, ge=1)
