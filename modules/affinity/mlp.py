"""AffinityMLP: the fingerprint + composition baseline for compound-protein affinity.

Consumes `plexlab.datamodules.affinity.datamodule.AffinityBatch`; the data module computes the features
(Morgan bits and amino-acid + dipeptide composition), so this module never imports RDKit.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from plexlab.datamodules.affinity.datamodule import AffinityBatch
from plexlab.modules.affinity.evaluation import AffinityEvalMixin
from plexlab.modules.layers import mlp


class AffinityMLP(AffinityEvalMixin, pl.LightningModule):
    """MLP on [Morgan fingerprint (radius 2, `fingerprint_dim` bits); amino-acid + dipeptide composition].

    Composition features are standardized by a fixed scale (x `composition_scale`) since they are small
    fractions; the output is target_mean + target_std * MLP(x), trained with MSE. Same metrics and primary
    metric (val/pearson) as CPAC, so both run on the same data module and runner.
    """

    primary_metric = "val/pearson"
    primary_mode = "max"

    def __init__(
        self,
        fingerprint_dim: int = 2048,
        composition_dim: int = 420,
        atom_dim: int | None = None,
        protein_vocab: int | None = None,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        hidden: list[int] | None = None,
        dropout: float = 0.2,
        composition_scale: float = 20.0,
        lr: float = 1.0e-3,
        weight_decay: float = 1.0e-5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.mlp = mlp([fingerprint_dim + composition_dim, *(hidden or [512, 256]), 1], dropout)

    def features(self, batch: AffinityBatch) -> torch.Tensor:
        """Input vector per pair: fingerprint bits and scaled composition."""
        return torch.cat([batch.fingerprint, batch.composition * self.hparams.composition_scale], -1)

    def forward(self, batch: AffinityBatch) -> torch.Tensor:
        """Predicted affinity [B]."""
        z = self.mlp(self.features(batch)).squeeze(-1)
        return self.hparams.target_mean + self.hparams.target_std * z

    def embed(self, batch: AffinityBatch) -> torch.Tensor:
        """Last hidden layer, one row per pair."""
        return self.mlp[:-1](self.features(batch))

    def training_step(self, batch: AffinityBatch, batch_idx: int) -> torch.Tensor:
        loss = F.mse_loss(self(batch), batch.affinity)
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=batch.size)
        return loss

    def validation_step(self, batch: AffinityBatch, batch_idx: int) -> None:
        self._eval_collect(batch, self(batch))

    def test_step(self, batch: AffinityBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_collect(batch, self(batch))

    def predict_step(self, batch: AffinityBatch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
