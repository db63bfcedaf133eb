"""How the minibatch models log their training loss: per step and as the epoch's mean, under stable names."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


def log_train_loss(
    module: pl.LightningModule, value: torch.Tensor | float, batch_size: int, name: str = "train/loss", **kw
) -> None:
    """`name` per step (written every `log_every_n_steps`) and its epoch mean as `<name>_epoch`, always.

    One `self.log(..., on_step=True, on_epoch=True)` would do both, but Lightning then renames the logged
    series `<name>_step` and `<name>_epoch`, and dashboards, tables and tests read `train/loss`. The other
    terms of a loss are logged per epoch only (on_step=False, on_epoch=True) by the models themselves.
    """
    module.log(name, value, on_step=True, on_epoch=False, batch_size=batch_size, **kw)
    module.log(f"{name}_epoch", value, on_step=False, on_epoch=True, batch_size=batch_size)
