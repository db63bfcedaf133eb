"""The shared MLP builder: layer order and where norm/activation/dropout go (state-dict keys depend on it)."""

from __future__ import annotations

from pathlib import Path

from plexlab.modules import layers
from plexlab.modules.layers import mlp
from torch import nn


def kinds(seq: nn.Sequential) -> list[str]:
    return [type(m).__name__ for m in seq]


def test_plain_last_layer_by_default() -> None:
    net = mlp([4, 8, 8, 2], 0.1)
    assert kinds(net) == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [8, 8, 2]
    assert net[2].p == 0.1


def test_norm_activation_and_no_dropout_after_every_layer() -> None:
    net = mlp([4, 6, 3], norm=nn.BatchNorm1d, activation=nn.PReLU, last_plain=False)
    assert kinds(net) == ["Linear", "BatchNorm1d", "PReLU", "Linear", "BatchNorm1d", "PReLU"]
    assert net[1].num_features == 6 and net[4].num_features == 3
    assert net[2] is not net[5]  # a fresh activation (PReLU has a weight) per layer


def test_identity_norm_keeps_a_slot_and_degenerate_sizes() -> None:
    assert kinds(mlp([4, 5, 2], 0.0, norm=nn.Identity)) == ["Linear", "Identity", "ReLU", "Dropout", "Linear"]
    assert len(mlp([4])) == 0
    assert kinds(mlp([4, 2])) == ["Linear"]


def test_one_mlp_builder_in_the_modules() -> None:
    # Issue 20: the hypergraph family had its own mlp(); every model now builds its MLPs here.
    modules = Path(layers.__file__).parent
    defining = sorted(
        p.relative_to(modules).as_posix() for p in modules.rglob("*.py") if "\ndef mlp(" in p.read_text()
    )
    assert defining == ["layers.py"]


def test_hypergraph_models_keep_their_state_dict_keys() -> None:
    # Checkpoints written before the builders were folded still load: LayerNorm (or an Identity slot) sits
    # between Linear and ReLU exactly as in the hypergraph family's own builder.
    from plexlab.modules.hypergraph.hypergcl import HyperGCL
    from plexlab.modules.hypergraph.node_mlp import NodeMLP

    assert list(NodeMLP(4, 3, hidden=8).state_dict()) == [
        "net.0.weight", "net.0.bias", "net.1.weight", "net.1.bias", "net.4.weight", "net.4.bias",
    ]  # fmt: skip
    keys = HyperGCL(4, 3, hidden=8, views="generative", projector_layers=2).state_dict()
    assert {
        "classifier.1.weight",
        "projector.4.weight",
        "generator.node_head.mean.4.weight",
        "generator.decoder.4.weight",
    } <= set(keys)
    assert "encoder.layers.0.v2e_in.1.weight" in keys  # the LayerNorm after the first Linear
