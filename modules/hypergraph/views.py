"""Fabricated hypergraph views for contrastive learning (HyperGCL): each drops or masks one thing.

The names are the reference code's (`--aug`): `edge` drops vertex-hyperedge incidences (the reference's
`permute_edges` on the star expansion), `hyperedge` drops whole hyperedges, `node` drops vertices, `feature`
gives a `ratio` of the vertices the mean feature vector (the reference's `mask_nodes`), `subgraph` keeps the
vertices random walks reach. `feature_columns` (the mean of a `ratio` of the feature columns for every
vertex) is not in the paper: it is kept for comparison under its own name.

Every view returns a new graph and never mutates its input (the reference code edits the index tensors in
place). Vertices a view drops keep their row, with zeroed features and no incidences, and are marked in
`kept`: they are absent from that view, neither positives nor negatives of the contrastive loss.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from plexlab.datamodules.hypergraph import Hypergraph

ViewName = Literal["edge", "hyperedge", "node", "feature", "feature_columns", "subgraph"]


@dataclass(frozen=True)
class View:
    """An augmented graph, the vertices it kept, and a weight per incidence (1 for fabricated views)."""

    graph: Hypergraph
    kept: torch.Tensor  # [num_nodes] bool
    weight: torch.Tensor | None = None  # [num_incidences] in [0, 1], for generated views


def _keep_count(n: int, ratio: float) -> int:
    return n - round(ratio * n)


def _random_subset(n: int, keep: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[torch.randperm(n, device=device)[:keep]] = True
    return mask


def _select_incidences(g: Hypergraph, keep: torch.Tensor) -> Hypergraph:
    return replace(g, node_idx=g.node_idx[keep], edge_idx=g.edge_idx[keep])


def _all_kept(g: Hypergraph) -> torch.Tensor:
    return torch.ones(g.num_nodes, dtype=torch.bool, device=g.x.device)


def drop_hyperedges(g: Hypergraph, ratio: float) -> View:
    """Drop a `ratio` of the hyperedges with all their incidences."""
    kept_edges = _random_subset(g.num_edges, _keep_count(g.num_edges, ratio), g.x.device)
    return View(_select_incidences(g, kept_edges[g.edge_idx]), _all_kept(g))


def drop_incidences(g: Hypergraph, ratio: float) -> View:
    """Drop a `ratio` of the vertex-hyperedge incidences."""
    n = g.node_idx.numel()
    return View(_select_incidences(g, _random_subset(n, _keep_count(n, ratio), g.x.device)), _all_kept(g))


def _restrict_to(g: Hypergraph, kept: torch.Tensor) -> View:
    x = g.x * kept.unsqueeze(1).to(g.x.dtype)
    return View(_select_incidences(replace(g, x=x), kept[g.node_idx]), kept)


def drop_nodes(g: Hypergraph, ratio: float) -> View:
    """Drop a `ratio` of the vertices: their incidences go and their features are zeroed."""
    return _restrict_to(g, _random_subset(g.num_nodes, _keep_count(g.num_nodes, ratio), g.x.device))


def mask_vertex_features(g: Hypergraph, ratio: float) -> View:
    """Give a `ratio` of the vertices the mean feature vector over vertices (the reference's `mask_nodes`)."""
    rows = ~_random_subset(g.num_nodes, _keep_count(g.num_nodes, ratio), g.x.device)
    x = torch.where(rows.unsqueeze(1), g.x.mean(dim=0, keepdim=True), g.x)
    return View(replace(g, x=x), _all_kept(g))


def mask_feature_columns(g: Hypergraph, ratio: float) -> View:
    """Replace a `ratio` of the feature columns, for every vertex, by their mean over vertices."""
    cols = ~_random_subset(g.x.shape[1], _keep_count(g.x.shape[1], ratio), g.x.device)
    x = torch.where(cols.unsqueeze(0), g.x.mean(dim=0, keepdim=True), g.x)
    return View(replace(g, x=x), _all_kept(g))


def random_walk_subgraph(g: Hypergraph, ratio: float, walkers: int = 64, max_steps: int = 2000) -> View:
    """Keep the vertices visited by random walks over the hypergraph until 1 - `ratio` of them are seen.

    A step moves a walker from its vertex through a random incident hyperedge to a random member; a walker on
    a vertex without hyperedges restarts at a random vertex.
    """
    n, device = g.num_nodes, g.x.device
    target = _keep_count(n, ratio)
    if g.node_idx.numel() == 0:  # nothing to walk along
        return _restrict_to(g, _random_subset(n, target, device))
    by_node = torch.argsort(g.node_idx, stable=True)
    by_edge = torch.argsort(g.edge_idx, stable=True)
    node_deg = torch.bincount(g.node_idx, minlength=n)
    edge_size = torch.bincount(g.edge_idx, minlength=g.num_edges)
    node_ptr = torch.cumsum(node_deg, 0) - node_deg
    edge_ptr = torch.cumsum(edge_size, 0) - edge_size
    last = g.node_idx.numel() - 1

    visited = torch.zeros(n, dtype=torch.bool, device=device)
    pos = torch.randint(n, (walkers,), device=device)
    for _ in range(max_steps):
        visited[pos] = True
        if int(visited.sum()) >= target:
            break
        deg = node_deg[pos]
        pick = node_ptr[pos] + (torch.rand(walkers, device=device) * deg).long()
        edge = g.edge_idx[by_node[pick.clamp_max(last)]]
        member = edge_ptr[edge] + (torch.rand(walkers, device=device) * edge_size[edge]).long()
        nxt = g.node_idx[by_edge[member.clamp_max(last)]]
        pos = torch.where(deg == 0, torch.randint(n, (walkers,), device=device), nxt)
    if int(visited.sum()) > target:  # the last step may overshoot: keep a random `target` of the visited
        idx = visited.nonzero().squeeze(1)
        visited = torch.zeros_like(visited)
        visited[idx[torch.randperm(idx.numel(), device=device)[:target]]] = True
    return _restrict_to(g, visited)


VIEWS = {
    "edge": drop_incidences,
    "hyperedge": drop_hyperedges,
    "node": drop_nodes,
    "feature": mask_vertex_features,
    "feature_columns": mask_feature_columns,
    "subgraph": random_walk_subgraph,
}


def fabricate(g: Hypergraph, name: ViewName, ratio: float) -> View:
    """Apply the fabricated view `name` with its drop/mask `ratio`."""
    return VIEWS[name](g, ratio)
