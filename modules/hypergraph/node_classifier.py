"""Shared evaluation of full-batch node classifiers: one graph per batch, masks select the split."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from plexlab.datamodules.hypergraph import NodeBatch


class NodeClassifier(pl.LightningModule):
    """Base class: subclasses implement `logits(batch)` and `training_step`; metrics are logged here."""

    primary_metric = "val/acc"
    primary_mode = "max"

    def logits(self, batch: NodeBatch) -> torch.Tensor:
        raise NotImplementedError

    def supervised_loss(self, logits: torch.Tensor, batch: NodeBatch) -> torch.Tensor:
        return F.cross_entropy(logits[batch.train_mask], batch.y[batch.train_mask])

    def _evaluate(self, batch: NodeBatch, split: str, mask: torch.Tensor) -> None:
        logits = self.logits(batch)
        loss = F.cross_entropy(logits[mask], batch.y[mask])
        acc = (logits[mask].argmax(dim=1) == batch.y[mask]).float().mean()
        self.log_dict({f"{split}/loss": loss, f"{split}/acc": acc}, batch_size=int(mask.sum()))

    def validation_step(self, batch: NodeBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val", batch.val_mask)

    def test_step(self, batch: NodeBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test", batch.test_mask)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
