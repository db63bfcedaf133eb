"""HyperGCL: the hypergraph reader, the fabricated views (the reference's names and semantics), the
contrastive loss (the reference's negatives), the linear projector, learning on a tiny graph."""

import math
import typing

import numpy as np
import pytest
import torch
from _hypergraph_files import write_graph
from _hypergraph_fit import fit_test_accuracy as _test_accuracy
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.hypergraph import Hypergraph, HypergraphDataModule
from plexlab.modules.hypergraph.hypergcl import HyperGCL, node_infonce
from plexlab.modules.hypergraph.node_mlp import NodeMLP
from plexlab.modules.hypergraph.views import VIEWS, View, fabricate
from torch import nn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def graph():
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    return Hypergraph(x, torch.tensor([0, 1, 2, 2, 3, 4, 5, 0]), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]), 3)


@pytest.mark.parametrize("name", ["edge", "hyperedge", "node", "feature", "feature_columns", "subgraph"])
def test_views_never_mutate_their_input(name):
    g = graph()
    before = (g.x.clone(), g.node_idx.clone(), g.edge_idx.clone())
    fabricate(g, name, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, (g.x, g.node_idx, g.edge_idx), strict=True))


def test_edge_drops_incidences_and_hyperedge_drops_hyperedges_as_the_reference_names_them():
    torch.manual_seed(0)
    g = graph()
    v = fabricate(g, "edge", 0.25)  # 8 incidences -> 6, the vertices and their features all kept
    assert v.graph.node_idx.numel() == 6 and torch.equal(v.graph.x, g.x) and v.kept.all()
    v = fabricate(g, "hyperedge", 1 / 3)  # 3 hyperedges -> 2, each with every one of its incidences
    kept_edges = set(v.graph.edge_idx.tolist())
    assert len(kept_edges) == 2 and v.kept.all()
    assert v.graph.node_idx.numel() == sum(int((g.edge_idx == e).sum()) for e in kept_edges)


def test_feature_view_gives_a_ratio_of_vertices_the_mean_feature_vector():
    # The reference's mask_nodes: 30 % of the vertices (here 3 of 6) get the mean row; no column is spared.
    torch.manual_seed(0)
    g = graph()
    x = fabricate(g, "feature", 0.5).graph.x
    masked = (x != g.x).any(1)
    assert int(masked.sum()) == 3
    assert torch.equal(x[masked], g.x.mean(0).expand(3, 4))  # every column of a masked vertex
    assert torch.equal(x[~masked], g.x[~masked])


def test_feature_columns_view_masks_columns_for_every_vertex():
    torch.manual_seed(0)
    g = graph()
    x = fabricate(g, "feature_columns", 0.5).graph.x
    changed = (x != g.x).any(0)
    assert int(changed.sum()) == 2 and torch.equal(x[:, changed], g.x[:, changed].mean(0).expand(6, 2))


def test_node_and_subgraph_views_drop_vertices():
    torch.manual_seed(0)
    g = graph()
    v = fabricate(g, "node", 0.5)
    dropped = ~v.kept
    assert int(dropped.sum()) == 3 and (v.graph.x[dropped] == 0).all()
    assert not dropped[v.graph.node_idx].any()
    v = fabricate(g, "subgraph", 0.5)
    assert int(v.kept.sum()) == 3


def test_node_infonce_matches_hand_computation():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t = 0.5
    e = math.exp
    # view 1 -> 2: node 0: pos cos 1, negatives: other of view 2 (cos 1), other of view 1 (cos 0)
    l10 = -math.log(e(1 / t) / (e(1 / t) + e(1 / t) + e(0)))
    l11 = -math.log(e(0) / (e(0) + e(0) + e(0)))
    # view 2 -> 1: node 0: pos cos 1, other of view 1 cos 0, other of view 2 cos 1
    l20 = -math.log(e(1 / t) / (e(1 / t) + e(0) + e(1 / t)))
    l21 = -math.log(e(0) / (e(1 / t) + e(0) + e(1 / t)))
    expected = 0.5 * ((l10 + l20) / 2 + (l11 + l21) / 2)
    assert node_infonce(z1, z2, t).item() == pytest.approx(expected, rel=1e-5)


# Vertex 2 is dropped by view 1 (its row there is junk) and kept by view 2.
Z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, -3.0]])
Z2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
KEPT1, KEPT2 = torch.tensor([True, True, False]), torch.tensor([True, True, True])


def _hand_loss_with_view_negatives(t: float) -> float:
    """The reference's com_semi_loss by hand: positives are vertices 0 and 1; vertex 2 of view 2 is a
    negative of every view-1 anchor and of the other view-2 anchors; view 1's row 2 takes no part."""
    p, o = math.exp(1 / t), 1.0  # exp(cos / t) for cos 1 and cos 0
    from_1 = [-math.log(p / (p + p + o + o)), -math.log(o / (o + o + p + o))]  # between (j=0,1,2) + within 1
    from_2 = [-math.log(p / (p + o + p + o)), -math.log(o / (p + o + p + o))]  # between (j=0,1) + within 2
    return 0.5 * sum(a + b for a, b in zip(from_1, from_2, strict=True)) / 2


def test_negatives_are_every_vertex_either_view_kept():
    t = 0.5
    got = node_infonce(Z1, Z2, t, KEPT1, KEPT2).item()
    assert got == pytest.approx(_hand_loss_with_view_negatives(t), rel=1e-5)


class _Rows(nn.Module):
    """An 'encoder' that returns the view's features, so the loss sees hand-chosen embeddings."""

    def forward(self, graph: Hypergraph, weight: torch.Tensor | None = None) -> torch.Tensor:
        return graph.x


def _views() -> tuple[View, View]:
    empty = torch.zeros(0, dtype=torch.long)
    return View(Hypergraph(Z1, empty, empty, 0), KEPT1), View(Hypergraph(Z2, empty, empty, 0), KEPT2)


@pytest.mark.parametrize("negatives", ["view", "shared"])
def test_model_contrast_uses_the_reference_negatives_by_default(negatives):
    model = HyperGCL(
        2, 2, hidden=2, temperature=0.5, **({} if negatives == "view" else {"negatives": negatives})
    )
    model.encoder, model.projector = _Rows(), nn.Identity()
    got = model.contrastive_loss(*_views()).item()
    shared = KEPT1 & KEPT2
    want = (
        _hand_loss_with_view_negatives(0.5)
        if negatives == "view"
        else node_infonce(Z1[shared], Z2[shared], 0.5).item()  # the old behaviour, now asked for by name
    )
    assert got == pytest.approx(want, rel=1e-5)
    assert _hand_loss_with_view_negatives(0.5) != pytest.approx(
        node_infonce(Z1[shared], Z2[shared], 0.5).item()
    )


def test_projector_is_linear_by_default_and_two_layers_on_request():
    kinds = [type(m).__name__ for m in HyperGCL(4, 3, hidden=8).projector]
    assert kinds == ["Linear"]
    two = HyperGCL(4, 3, hidden=8, projector_layers=2).projector
    assert [type(m).__name__ for m in two] == ["Linear", "Identity", "ReLU", "Dropout", "Linear"]
    with pytest.raises(ValueError, match="projector_layers must be at least 1, got 0"):
        HyperGCL(4, 3, projector_layers=0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: (f / "hyperedges.json").write_text('{"hyperedges": [[0, 999]]}'), "hyperedge 0: node 999"),
        (lambda f: np.save(f / "labels.npy", np.zeros(5, dtype=np.int64)), "expected 60 labels"),
        (
            lambda f: (f / "splits.json").write_text('[{"train": [1, 2], "test": [2, 3]}]'),
            "node 2 is in both",
        ),
        (lambda f: (f / "hyperedges.json").write_text("{not json"), "cannot read hyperedges"),
    ],
)
def test_bad_hypergraph_files_name_file_and_record(tmp_path, mutate, message):
    folder = write_graph(tmp_path / "g")
    mutate(folder)
    with pytest.raises(DataError, match=message) as exc:
        HypergraphDataModule(str(folder)).setup("fit")
    assert "\n" not in str(exc.value) and str(folder) in str(exc.value)


def test_hypergcl_beats_feature_mlp_on_tiny_hypergraph(tmp_path):
    # Noisy features, 12 labels; hyperedges join same-class nodes, so only a model that uses them does well.
    folder = write_graph(tmp_path / "g")
    mlp_acc = _test_accuracy(NodeMLP, folder)
    hgcl_acc = _test_accuracy(HyperGCL, folder, aug="hyperedge")
    assert hgcl_acc > mlp_acc + 0.1, (hgcl_acc, mlp_acc)


def test_model_offers_exactly_the_views_there_are():
    # The config checks `aug` against the model's Literal: a view added to VIEWS must be offered there too.
    offered = typing.get_args(typing.get_type_hints(HyperGCL.__init__)["aug"])
    assert set(offered) == set(VIEWS) | {"none"}
