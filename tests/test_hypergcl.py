"""HyperGCL: the hypergraph reader, the fabricated views, the contrastive loss, learning on a tiny graph."""

import math

import numpy as np
import pytest
import torch
from _hypergraph_files import write_graph
from _hypergraph_fit import fit_test_accuracy as _test_accuracy
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.hypergraph import Hypergraph, HypergraphDataModule
from plexlab.modules.hypergraph.hypergcl import HyperGCL, node_infonce
from plexlab.modules.hypergraph.node_mlp import NodeMLP
from plexlab.modules.hypergraph.views import fabricate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def graph():
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    return Hypergraph(x, torch.tensor([0, 1, 2, 2, 3, 4, 5, 0]), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]), 3)


@pytest.mark.parametrize("name", ["edge", "incidence", "node", "feature", "subgraph"])
def test_views_never_mutate_their_input(name):
    g = graph()
    before = (g.x.clone(), g.node_idx.clone(), g.edge_idx.clone())
    fabricate(g, name, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, (g.x, g.node_idx, g.edge_idx), strict=True))


def test_each_view_drops_what_it_says():
    torch.manual_seed(0)
    g = graph()
    v = fabricate(g, "edge", 1 / 3)
    assert len(set(v.graph.edge_idx.tolist())) == 2 and v.kept.all()
    v = fabricate(g, "incidence", 0.25)
    assert v.graph.node_idx.numel() == 6 and torch.equal(v.graph.x, g.x)
    v = fabricate(g, "node", 0.5)
    dropped = ~v.kept
    assert int(dropped.sum()) == 3 and (v.graph.x[dropped] == 0).all()
    assert not dropped[v.graph.node_idx].any()
    v = fabricate(g, "feature", 0.5)
    changed = (v.graph.x != g.x).any(0)
    assert int(changed.sum()) == 2 and torch.allclose(
        v.graph.x[:, changed], g.x[:, changed].mean(0).expand(6, 2)
    )
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
    hgcl_acc = _test_accuracy(HyperGCL, folder, aug="edge")
    assert hgcl_acc > mlp_acc + 0.1, (hgcl_acc, mlp_acc)
