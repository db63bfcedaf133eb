"""Small building blocks shared by several models."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from torch import nn


def mlp(
    sizes: Sequence[int],
    dropout: float | None = None,
    norm: Callable[[int], nn.Module] | None = None,
    activation: Callable[[], nn.Module] = nn.ReLU,
    last_plain: bool = True,
) -> nn.Sequential:
    """Linear layers sizes[0] -> sizes[1] -> ... -> sizes[-1]. Each Linear (but the last when `last_plain`)
    is followed by `norm(width)` when given, `activation()`, and `Dropout(dropout)` when dropout is not None.

    The layers sit flat in one Sequential in that order, so the state-dict keys are the same as those of the
    hand-written loops this replaces (`nn.Identity` as `norm` keeps a parameter-free slot).
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if last_plain and i == len(sizes) - 2:
            continue
        if norm is not None:
            layers.append(norm(b))
        layers.append(activation())
        if dropout is not None:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
