"""HyperGCL's generative views: a variational hypergraph autoencoder (VHGAE) that keeps or drops incidences.

An encoder over the star expansion gives every vertex and every hyperedge a Gaussian latent (mean and
softplus std heads, reparameterised sample). A decoder scores each vertex-hyperedge pair from the product of
their latents as two logits, (drop, keep). On the graph's own incidences a hard Gumbel-softmax of those
logits gives each incidence a keep weight that is exactly 0 or 1 in the forward pass and has the soft
sample's gradient in the backward pass (straight-through); the weight multiplies that incidence's messages in
the contrastive encoder (`View.weight`), so the generated view is differentiable in the generator.

The VHGAE loss reconstructs the incidence: cross entropy of the observed incidences against "keep" plus that
of as many sampled non-incidences against "drop", plus the Gaussian KL of the vertex and hyperedge latents,
each averaged over rows and divided by the row count (the VGAE scaling, as in the reference code). Choices
where the paper is silent: only the graph's own incidences are scored and reconstructed (the singleton
hyperedges the encoder adds always keep weight 1), negatives are drawn uniformly from the vertex x hyperedge
pairs that are not incidences.

Nothing here mutates the input graph: a generated view shares the input's tensors and only adds weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from plexlab.datamodules.hypergraph import Hypergraph
from plexlab.modules.hypergraph.views import View
from plexlab.modules.layers import mlp
from torch import nn


def hard_keep(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Straight-through hard Gumbel-softmax over (drop, keep) logits [K, 2] -> keep weights [K].

    Forward values are exactly 0.0 or 1.0 (`hard + (soft - soft)` adds an exact zero, unlike
    `hard - soft.detach() + soft`, which can round to 0.99999994); gradients are those of the soft sample.
    """
    gumbel = -torch.empty_like(logits).exponential_().log()
    soft = torch.softmax((logits + gumbel) / tau, dim=1)[:, 1]
    hard = (soft > 0.5).to(logits.dtype)  # argmax of two classes; a tie (probability 0) counts as drop
    return hard + (soft - soft.detach())


def gaussian_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(0, 1)) summed over dimensions, averaged over rows, divided by the row count."""
    per_row = -0.5 * (1 + 2 * torch.log(std) - mean**2 - std**2).sum(dim=1)
    return per_row.mean() / mean.shape[0]


def vhgae_loss(
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor,
    node_mean: torch.Tensor,
    node_std: torch.Tensor,
    edge_mean: torch.Tensor,
    edge_std: torch.Tensor,
) -> torch.Tensor:
    """Reconstruction (incidences -> keep, non-incidences -> drop, mean cross entropy each) + both KLs."""
    keep = torch.ones(pos_logits.shape[0], dtype=torch.long, device=pos_logits.device)
    drop = torch.zeros(neg_logits.shape[0], dtype=torch.long, device=neg_logits.device)
    reconstruction = F.cross_entropy(pos_logits, keep)
    if neg_logits.shape[0] > 0:
        reconstruction = reconstruction + F.cross_entropy(neg_logits, drop)
    return reconstruction + gaussian_kl(node_mean, node_std) + gaussian_kl(edge_mean, edge_std)


def negative_incidences(g: Hypergraph, count: int, tries: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `count` uniform (vertex, hyperedge) pairs that are not incidences of `g` (fewer if dense)."""
    device, num_edges = g.x.device, g.num_edges
    total = g.num_nodes * num_edges
    existing = g.node_idx * num_edges + g.edge_idx
    found = torch.empty(0, dtype=torch.long, device=device)
    for _ in range(tries):
        if found.numel() >= count or total == 0:
            break
        draw = torch.randint(total, (2 * count + 16,), device=device)
        draw = draw[~torch.isin(draw, existing) & ~torch.isin(draw, found)]
        found = torch.cat([found, torch.unique(draw)])
    found = found[:count]
    return found // max(num_edges, 1), found % max(num_edges, 1)


class GaussianHead(nn.Module):
    """Mean and softplus standard deviation of a diagonal Gaussian, each from a 2-layer MLP."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mean = mlp([hidden, hidden, hidden], 0.0, norm=nn.Identity)
        self.std = mlp([hidden, hidden, hidden], 0.0, norm=nn.Identity)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sample, mean, std), the sample by reparameterisation."""
        mean, std = self.mean(h), F.softplus(self.std(h)) + 1e-6  # keeps log(std) finite
        return mean + std * torch.randn_like(std), mean, std


class VHGAE(nn.Module):
    """Variational hypergraph autoencoder that generates a view by keeping or dropping each incidence.

    `encoder(g, weight=None, return_edges=True)` must return vertex and hyperedge embeddings ([num_nodes,
    hidden] and [at least num_edges, hidden], the graph's hyperedges first): HyperGCL passes its own
    AllDeepSets. `tau` is the Gumbel-softmax temperature (1, as in the reference code).
    """

    def __init__(self, encoder: nn.Module, hidden: int, tau: float = 1.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.node_head = GaussianHead(hidden)
        self.edge_head = GaussianHead(hidden)
        self.decoder = mlp([hidden, hidden, 2], 0.0, norm=nn.Identity)
        self.tau = tau

    def score(
        self, node_z: torch.Tensor, edge_z: torch.Tensor, nodes: torch.Tensor, edges: torch.Tensor
    ) -> torch.Tensor:
        """(drop, keep) logits of the vertex-hyperedge pairs (nodes[k], edges[k])."""
        return self.decoder(node_z[nodes] * edge_z[edges])

    def forward(self, g: Hypergraph, with_loss: bool = True) -> tuple[View, torch.Tensor | None]:
        """A generated view of `g` (all vertices kept, a hard keep weight per incidence), the VHGAE loss."""
        h_node, h_edge = self.encoder(g, return_edges=True)
        node_z, node_mean, node_std = self.node_head(h_node)
        edge_z, edge_mean, edge_std = self.edge_head(h_edge[: g.num_edges])
        pos_logits = self.score(node_z, edge_z, g.node_idx, g.edge_idx)
        keep = hard_keep(pos_logits, self.tau)
        view = View(g, torch.ones(g.num_nodes, dtype=torch.bool, device=g.x.device), keep)
        if not with_loss:
            return view, None
        neg_nodes, neg_edges = negative_incidences(g, g.node_idx.numel())
        neg_logits = self.score(node_z, edge_z, neg_nodes, neg_edges)
        loss = vhgae_loss(pos_logits, neg_logits, node_mean, node_std, edge_mean, edge_std)
        return view, loss
