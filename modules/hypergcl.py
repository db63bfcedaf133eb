"""HyperGCL: contrastive learning on hypergraphs for node classification with few labels.

Encoder: AllDeepSets on the star expansion, every vertex also in its own singleton hyperedge. Each layer is
vertex -> hyperedge then hyperedge -> vertex, each a DeepSets function f2(mean_k(w_k f1(x_k))) with 2-layer
MLPs and LayerNorm. Mean rather than sum aggregation keeps hub hyperedges from dominating (our choice; the
paper leaves it to AllSet's options). Training is joint: cross entropy on the labelled vertices of the
original graph + `contrast_weight` x the node-level InfoNCE between two fabricated views of it.

`aug` picks the fabricated view; "none" trains the plain AllDeepSets encoder (the ablation). Generated views
(the VHGAE generator) enter through `View.weight`, the per-incidence keep weight the encoder already takes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from plexlab.datamodules.hypergraph import Hypergraph, NodeBatch
from plexlab.modules.hypergraph_views import View, fabricate
from plexlab.modules.node_classifier import NodeClassifier
from plexlab.modules.node_mlp import mlp
from torch import nn


def scatter_mean(src: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, size: int) -> torch.Tensor:
    """Weighted mean of the rows of `src` grouped by `index`; empty groups give zeros."""
    total = torch.zeros(size, src.shape[1], dtype=src.dtype, device=src.device)
    total.index_add_(0, index, src * weight.unsqueeze(1))
    norm = torch.zeros(size, dtype=src.dtype, device=src.device).index_add_(0, index, weight)
    return total / norm.clamp_min(1e-12).unsqueeze(1)


def node_infonce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Node-level InfoNCE between two views (GRACE form), symmetric, with intra-view negatives.

    For vertex i in view 1 the positive is i in view 2; the negatives are every other vertex of both views.
    """

    def one_side(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        between = torch.exp(a @ b.T / temperature)
        within = torch.exp(a @ a.T / temperature)
        denominator = between.sum(1) + within.sum(1) - within.diagonal()
        return -torch.log(between.diagonal() / denominator)

    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    return 0.5 * (one_side(z1, z2) + one_side(z2, z1)).mean()


class AllDeepSetsLayer(nn.Module):
    """One vertex -> hyperedge -> vertex round of DeepSets aggregation."""

    def __init__(self, in_dim: int, hidden: int, mlp_layers: int, dropout: float) -> None:
        super().__init__()
        sizes = [hidden] * mlp_layers
        self.v2e_in = mlp([in_dim, *sizes], dropout)
        self.v2e_out = mlp([hidden, *sizes], dropout)
        self.e2v_in = mlp([hidden, *sizes], dropout)
        self.e2v_out = mlp([hidden, *sizes], dropout)

    def forward(
        self,
        x: torch.Tensor,
        node_idx: torch.Tensor,
        edge_idx: torch.Tensor,
        weight: torch.Tensor,
        num_edges: int,
    ) -> torch.Tensor:
        edges = self.v2e_out(scatter_mean(self.v2e_in(x)[node_idx], edge_idx, weight, num_edges))
        return self.e2v_out(scatter_mean(self.e2v_in(edges)[edge_idx], node_idx, weight, x.shape[0]))


class AllDeepSets(nn.Module):
    """AllDeepSets encoder; singleton hyperedges are added here so every vertex gets its own message."""

    def __init__(self, in_dim: int, hidden: int, num_layers: int, mlp_layers: int, dropout: float) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * num_layers
        self.layers = nn.ModuleList(AllDeepSetsLayer(a, hidden, mlp_layers, dropout) for a in dims[:-1])
        self.dropout = nn.Dropout(dropout)

    def forward(self, g: Hypergraph, weight: torch.Tensor | None = None) -> torch.Tensor:
        n = g.num_nodes
        loops = torch.arange(n, device=g.x.device)
        node_idx = torch.cat([g.node_idx, loops])
        edge_idx = torch.cat([g.edge_idx, loops + g.num_edges])
        w = torch.ones(node_idx.numel(), dtype=g.x.dtype, device=g.x.device)
        if weight is not None:
            w[: weight.numel()] = weight
        h = self.dropout(g.x)
        for i, layer in enumerate(self.layers):
            h = layer(h, node_idx, edge_idx, w, g.num_edges + n)
            if i < len(self.layers) - 1:
                h = self.dropout(F.relu(h))
        return h


class HyperGCL(NodeClassifier):
    """HyperGCL with fabricated views: AllDeepSets + joint cross entropy and node-level InfoNCE."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 256,
        num_layers: int = 1,
        mlp_layers: int = 2,
        dropout: float = 0.2,
        aug: Literal["edge", "incidence", "node", "feature", "subgraph", "none"] = "edge",
        aug_ratio: float = 0.3,
        contrast_weight: float = 0.1,
        temperature: float = 0.3,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = AllDeepSets(in_dim, hidden, num_layers, mlp_layers, dropout)
        self.classifier = mlp([hidden, hidden, num_classes], dropout)
        self.projector = mlp([hidden, hidden, hidden], 0.0, norm=False)

    def embed(self, batch: NodeBatch) -> torch.Tensor:
        """Vertex embeddings of the whole graph, one row per vertex."""
        return self.encoder(batch.graph)

    def logits(self, batch: NodeBatch) -> torch.Tensor:
        return self.classifier(self.encoder(batch.graph))

    def views(self, graph: Hypergraph) -> tuple[View, View]:
        """The two views to contrast."""
        return fabricate(graph, self.hparams.aug, self.hparams.aug_ratio), fabricate(
            graph, self.hparams.aug, self.hparams.aug_ratio
        )

    def contrastive_loss(self, v1: View, v2: View) -> torch.Tensor:
        """InfoNCE over the vertices both views kept."""
        shared = v1.kept & v2.kept
        z1 = self.projector(self.encoder(v1.graph, v1.weight))[shared]
        z2 = self.projector(self.encoder(v2.graph, v2.weight))[shared]
        return node_infonce(z1, z2, self.hparams.temperature)

    def training_step(self, batch: NodeBatch, batch_idx: int) -> torch.Tensor:
        loss = self.supervised_loss(self.logits(batch), batch)
        if self.hparams.aug != "none" and self.hparams.contrast_weight > 0:
            contrast = self.contrastive_loss(*self.views(batch.graph))
            self.log("train/contrast", contrast, on_step=True, on_epoch=False, batch_size=1)
            loss = loss + self.hparams.contrast_weight * contrast
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=1)
        return loss
