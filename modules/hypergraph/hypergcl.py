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
from plexlab.modules.hypergraph.vhgae import VHGAE
from plexlab.modules.hypergraph.views import View, fabricate
from plexlab.modules.layers import mlp
from torch import nn


def scatter_mean(src: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, size: int) -> torch.Tensor:
    """Weighted mean of the rows of `src` grouped by `index`; empty groups give zeros."""
    total = torch.zeros(size, src.shape[1], dtype=src.dtype, device=src.device)
    total.index_add_(0, index, src * weight.unsqueeze(1))
    norm = torch.zeros(size, dtype=src.dtype, device=src.device).index_add_(0, index, weight)
    return total / norm.clamp_min(1e-12).unsqueeze(1)


def node_infonce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    kept1: torch.Tensor | None = None,
    kept2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Node-level InfoNCE between two views (GRACE form), symmetric, with intra-view negatives.

    `z1`, `z2` hold one row per vertex of the graph; `kept1`, `kept2` (bool, default all) mark the vertices
    each view kept. For a vertex i kept in both views, anchored in view 1, the positive is i in view 2 and
    the negatives are every other vertex kept in view 1 or in view 2, as the reference's `com_semi_loss`:
    only the positives are restricted to the shared vertices. The loss is the mean over those anchors of
    both directions.
    """
    every = torch.ones(z1.shape[0], dtype=torch.bool, device=z1.device)
    kept1 = every if kept1 is None else kept1
    kept2 = every if kept2 is None else kept2
    shared = kept1 & kept2
    a, b = F.normalize(z1[kept1], dim=1), F.normalize(z2[kept2], dim=1)
    # Row of each shared vertex among the kept rows of each view.
    in_a, in_b = (torch.cumsum(kept1, 0) - 1)[shared], (torch.cumsum(kept2, 0) - 1)[shared]
    # Three similarity matrices serve both directions (b @ a.T is the transpose of a @ b.T).
    between = torch.exp(a @ b.T / temperature)
    within1 = torch.exp(a @ a.T / temperature)
    within2 = torch.exp(b @ b.T / temperature)
    positive = between[in_a, in_b]
    denominator1 = (between.sum(1) + within1.sum(1) - within1.diagonal())[in_a]
    denominator2 = (between.sum(0) + within2.sum(1) - within2.diagonal())[in_b]
    return 0.5 * (-torch.log(positive / denominator1) - torch.log(positive / denominator2)).mean()


class AllDeepSetsLayer(nn.Module):
    """One vertex -> hyperedge -> vertex round of DeepSets aggregation."""

    def __init__(self, in_dim: int, hidden: int, mlp_layers: int, dropout: float) -> None:
        super().__init__()
        sizes = [hidden] * mlp_layers
        self.v2e_in = mlp([in_dim, *sizes], dropout, norm=nn.LayerNorm)
        self.v2e_out = mlp([hidden, *sizes], dropout, norm=nn.LayerNorm)
        self.e2v_in = mlp([hidden, *sizes], dropout, norm=nn.LayerNorm)
        self.e2v_out = mlp([hidden, *sizes], dropout, norm=nn.LayerNorm)

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

    Args:
        in_dim: node feature width (from the data module).
        num_classes: number of node classes (from the data module).
        hidden: width of every encoder, classifier and projector layer.
        num_layers: AllDeepSets rounds (vertex -> hyperedge -> vertex).
        mlp_layers: linear layers in each DeepSets MLP.
        dropout: dropout on the input features, between rounds and inside the MLPs.
        aug: fabricated view, with the reference's names (modules/hypergraph/views.py): "edge" drops
            incidences, "hyperedge" hyperedges, "node" vertices, "feature" gives vertices the mean feature
            vector, "feature_columns" masks feature columns (not in the paper), "subgraph" random walks;
            "none" trains the plain encoder (the ablation).
        aug_ratio: fraction of the things the view drops or masks (paper: 0.3).
        contrast_weight: weight of InfoNCE(fabricated, fabricated) beside cross entropy (paper: 0.1).
        temperature: InfoNCE temperature on cosine similarities (paper: 0.3).
        lr: Adam learning rate of the encoder, classifier and projector.
        weight_decay: Adam weight decay of the same.
        views: "fabricated" contrasts two fabricated views; "generative" adds the VHGAE view generator.
        generator_lr: the generator's own Adam learning rate (1e-3 as in the reference code).
        generator_contrast_weight: the generator minimises L_VHGAE - this x InfoNCE (paper: 10).
        generated_contrast_weight: the encoder step's weight of InfoNCE(fabricated, generated) (paper: 0.5).
        gumbel_tau: temperature of the generator's hard Gumbel-softmax.
        projector_layers: linear layers of the projection head; 1 (linear) as in the reference.
        negatives: "view" (the reference's): every other vertex either view kept is a negative; "shared"
            restricts negatives to the vertices both views kept, as this code did before.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 256,
        num_layers: int = 1,
        mlp_layers: int = 2,
        dropout: float = 0.2,
        aug: Literal["edge", "hyperedge", "node", "feature", "feature_columns", "subgraph", "none"] = "edge",
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
        projector_layers: int = 1,
        negatives: Literal["view", "shared"] = "view",
    ) -> None:
        super().__init__()
        if projector_layers < 1:
            raise ValueError(f"projector_layers must be at least 1, got {projector_layers}")
        self.save_hyperparameters()
        self.encoder = AllDeepSets(in_dim, hidden, num_layers, mlp_layers, dropout)
        self.classifier = mlp([hidden, hidden, num_classes], dropout, norm=nn.LayerNorm)
        # Linear as in the reference; more layers put Identity/ReLU/Dropout(0) between (the old 2-layer head).
        self.projector = mlp([hidden] * (projector_layers + 1), 0.0, norm=nn.Identity)
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
        """InfoNCE with the vertices both views kept as positives; negatives per `negatives`."""
        z1 = self.projector(self.encoder(v1.graph, v1.weight))
        z2 = self.projector(self.encoder(v2.graph, v2.weight))
        if self.hparams.negatives == "shared":  # the old restriction of negatives to the shared vertices
            shared = v1.kept & v2.kept
            return node_infonce(z1, z2, self.hparams.temperature, shared, shared)
        return node_infonce(z1, z2, self.hparams.temperature, v1.kept, v2.kept)

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
