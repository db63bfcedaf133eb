"""The baseline for node classification: an MLP on node features alone, ignoring the hypergraph."""

from __future__ import annotations

import torch
from plexlab.datamodules.hypergraph import NodeBatch
from plexlab.modules.hypergraph.node_classifier import NodeClassifier
from plexlab.modules.layers import mlp
from torch import nn


class NodeMLP(NodeClassifier):
    """Features -> MLP -> classes, trained with cross entropy on the labelled nodes.

    Args:
        in_dim: node feature width (from the data module).
        num_classes: number of node classes (from the data module).
        hidden: width of the hidden layers.
        num_layers: linear layers in all (2: one hidden layer).
        dropout: dropout on the input features and after each hidden layer.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 256,
        num_layers: int = 2,
        dropout: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = mlp([in_dim] + [hidden] * (num_layers - 1) + [num_classes], dropout, norm=nn.LayerNorm)
        self.input_dropout = nn.Dropout(dropout)

    def logits(self, batch: NodeBatch) -> torch.Tensor:
        return self.net(self.input_dropout(batch.graph.x))

    def embed(self, batch: NodeBatch) -> torch.Tensor:
        """The last hidden layer's output, one row per vertex."""
        return self.net[:-1](batch.graph.x)

    def training_step(self, batch: NodeBatch, batch_idx: int) -> torch.Tensor:
        loss = self.supervised_loss(self.logits(batch), batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=1)
        return loss
