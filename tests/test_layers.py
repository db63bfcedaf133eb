"""The shared MLP builder: layer order and where norm/activation/dropout go (state-dict keys depend on it)."""

from __future__ import annotations

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
