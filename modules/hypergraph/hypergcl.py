"""HyperGCL: contrastive learning on hypergraphs for node classification with few labels.

Encoder: AllDeepSets on the star expansion, every vertex also in its own singleton hyperedge. Each layer is
vertex -> hyperedge then hyperedge -> vertex, each a DeepSets function f2(mean_k(w_k f1(x_k))) with 2-layer
MLPs and LayerNorm. Mean rather than sum aggregation keeps hub hyperedges from dominating (our choice; the
paper leaves it to AllSet's options). Training is joint: cross entropy on the labelled vertices of the
original graph + `contrast_weight` x the node-level InfoNCE between two fabricated views of it.

`aug` picks the fabricated view; "none" trains the plain AllDeepSets encoder (the ablation).

`views="generative"` adds the VHGAE view generator (modules/hypergraph/vhgae.py), whose per-incidence hard
keep weights enter the encoder through `View.weight`. Each training step then alternates two optimizers
(manual optimization, only in this mode): the generator minimises L_VHGAE - `generator_contrast_weight` x
InfoNCE(original graph, generated view), so it learns views that reconstruct the incidence yet are hard to
contrast; the encoder minimises cross entropy + `generated_contrast_weight` x InfoNCE(fabricated view `aug`,
a fresh generated view drawn without gradient). The generator has its own AllDeepSets encoder of the same
size.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from plexlab.datamodules.hypergraph import Hypergraph, NodeBatch
from plexlab.modules.hypergraph.node_classifier import NodeClassifier
from plexlab.modules.hypergraph.node_mlp import mlp
from plexlab.modules.hypergraph.vhgae import VHGAE
from plexlab.modules.hypergraph.views import View, fabricate
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

    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    # Three similarity matrices serve both directions (z2 @ z1.T is the transpose of z1 @ z2.T).
    between = torch.exp(z1 @ z2.T / temperature)
    within1 = torch.exp(z1 @ z1.T / temperature)
    within2 = torch.exp(z2 @ z2.T / temperature)
    positive = between.diagonal()
    denominator1 = between.sum(1) + within1.sum(1) - within1.diagonal()
    denominator2 = between.sum(0) + within2.sum(1) - within2.diagonal()
    return 0.5 * (-torch.log(positive / denominator1) - torch.log(positive / denominator2)).mean()


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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(vertex, hyperedge) embeddings after the round."""
        edges = self.v2e_out(scatter_mean(self.v2e_in(x)[node_idx], edge_idx, weight, num_edges))
        return self.e2v_out(scatter_mean(self.e2v_in(edges)[edge_idx], node_idx, weight, x.shape[0])), edges


class AllDeepSets(nn.Module):
    """AllDeepSets encoder; singleton hyperedges are added here so every vertex gets its own message."""

    def __init__(self, in_dim: int, hidden: int, num_layers: int, mlp_layers: int, dropout: float) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * num_layers
        self.layers = nn.ModuleList(AllDeepSetsLayer(a, hidden, mlp_layers, dropout) for a in dims[:-1])
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, g: Hypergraph, weight: torch.Tensor | None = None, return_edges: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Vertex embeddings; with `return_edges` also the last layer's hyperedge embeddings (the graph's
        hyperedges first, then the singletons). `weight` scales each incidence's messages."""
        n = g.num_nodes
        loops = torch.arange(n, device=g.x.device)
        node_idx = torch.cat([g.node_idx, loops])
        edge_idx = torch.cat([g.edge_idx, loops + g.num_edges])
        w = torch.ones(node_idx.numel(), dtype=g.x.dtype, device=g.x.device)
        if weight is not None:
            w[: weight.numel()] = weight
        h = self.dropout(g.x)
        for i, layer in enumerate(self.layers):
            h, edges = layer(h, node_idx, edge_idx, w, g.num_edges + n)
            if i < len(self.layers) - 1:
                h = self.dropout(F.relu(h))
        return (h, edges) if return_edges else h


class HyperGCL(NodeClassifier):
    """HyperGCL: AllDeepSets + joint cross entropy and node-level InfoNCE, fabricated or generative views.

    `contrast_weight` weighs the InfoNCE between two fabricated views (views="fabricated"). With
    views="generative" the encoder step weighs InfoNCE(fabricated, generated) by `generated_contrast_weight`
    (paper: 0.5) and the generator minimises L_VHGAE - `generator_contrast_weight` (paper: 10) x InfoNCE with
    its own Adam (`generator_lr`, 1e-3 as in the reference code) and Gumbel temperature `gumbel_tau` (1).
    """

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
        views: Literal["fabricated", "generative"] = "fabricated",
        generator_lr: float = 1e-3,
        generator_contrast_weight: float = 10.0,
        generated_contrast_weight: float = 0.5,
        gumbel_tau: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = AllDeepSets(in_dim, hidden, num_layers, mlp_layers, dropout)
        self.classifier = mlp([hidden, hidden, num_classes], dropout)
        self.projector = mlp([hidden, hidden, hidden], 0.0, norm=False)
        if views == "generative":
            self.automatic_optimization = False  # generator and encoder steps alternate
            generator_encoder = AllDeepSets(in_dim, hidden, num_layers, mlp_layers, dropout)
            self.generator = VHGAE(generator_encoder, hidden, gumbel_tau)

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

    def training_step(self, batch: NodeBatch, batch_idx: int) -> torch.Tensor | None:
        if self.hparams.views == "generative":
            return self._generative_step(batch)
        loss = self.supervised_loss(self.logits(batch), batch)
        if self.hparams.aug != "none" and self.hparams.contrast_weight > 0:
            contrast = self.contrastive_loss(*self.views(batch.graph))
            self.log("train/contrast", contrast, on_step=True, on_epoch=False, batch_size=1)
            loss = loss + self.hparams.contrast_weight * contrast
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=1)
        return loss

    def _identity_or_fabricated(self, graph: Hypergraph) -> View:
        if self.hparams.aug == "none":
            return View(graph, torch.ones(graph.num_nodes, dtype=torch.bool, device=graph.x.device))
        return fabricate(graph, self.hparams.aug, self.hparams.aug_ratio)

    def _generative_step(self, batch: NodeBatch) -> None:
        model_opt, generator_opt = self.optimizers()
        graph = batch.graph

        # Generator step: reconstruct the incidence, and make the contrast with the original graph hard.
        self.toggle_optimizer(generator_opt)  # the encoder's weights get no gradient here
        generated, vhgae = self.generator(graph)
        original = View(graph, torch.ones(graph.num_nodes, dtype=torch.bool, device=graph.x.device))
        contrast = self.contrastive_loss(original, generated)
        generator_loss = vhgae - self.hparams.generator_contrast_weight * contrast
        generator_opt.zero_grad()
        self.manual_backward(generator_loss)
        generator_opt.step()
        self.untoggle_optimizer(generator_opt)

        # Encoder step: cross entropy + contrast between a fabricated view and a fresh generated one.
        self.toggle_optimizer(model_opt)
        self.generator.eval()  # no dropout in the generator while it only serves views
        with torch.no_grad():
            generated, _ = self.generator(graph, with_loss=False)
        self.generator.train()
        contrast = self.contrastive_loss(self._identity_or_fabricated(graph), generated)
        loss = (
            self.supervised_loss(self.logits(batch), batch)
            + self.hparams.generated_contrast_weight * contrast
        )
        model_opt.zero_grad()
        self.manual_backward(loss)
        model_opt.step()
        self.untoggle_optimizer(model_opt)

        for name, value in {
            "train/loss": loss,
            "train/contrast": contrast,
            "train/vhgae": vhgae,
            "train/generator_loss": generator_loss,
            "train/kept_incidences": generated.weight.mean() if generated.weight.numel() else 1.0,
        }.items():
            self.log(name, value, on_step=True, on_epoch=False, batch_size=1)
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer | list[torch.optim.Optimizer]:
        if self.hparams.views != "generative":
            return super().configure_optimizers()
        generator = list(self.generator.parameters())
        ids = {id(p) for p in generator}
        model = [p for p in self.parameters() if id(p) not in ids]
        return [
            torch.optim.Adam(model, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay),
            torch.optim.Adam(generator, lr=self.hparams.generator_lr),
        ]
