"""InfoNCE with cosine similarity and a temperature, for any pair of embedding batches.

`info_nce(a, b)`: row i of `a` and row i of `b` are a positive pair; every other row of the other batch is a
negative. logits = cos(a_i, b_j) / temperature; loss = cross entropy of each row against its diagonal,
averaged over rows, and with `symmetric=True` the mean of the a->b and b->a directions (CLIP-style).
`exclude[i, j] = True` removes pair (i, j) from the negatives (e.g. two copies of the same protein in a
batch); the diagonal is always kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float = 0.07,
    symmetric: bool = True,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE between matched rows of a [N, D] and b [N, D] (cosine similarity / temperature)."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"info_nce: need two [N, D] tensors of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    if exclude is not None:
        eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(exclude.to(a.device) & ~eye, float("-inf"))
    target = torch.arange(len(a), device=a.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss


class InfoNCE(nn.Module):
    """Module form of `info_nce` with a fixed temperature."""

    def __init__(self, temperature: float = 0.07, symmetric: bool = True) -> None:
        super().__init__()
        self.temperature, self.symmetric = temperature, symmetric

    def forward(self, a: torch.Tensor, b: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        return info_nce(a, b, self.temperature, self.symmetric, exclude)


def retrieval_accuracy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fraction of rows of `a` whose most cosine-similar row of `b` is their own partner (top-1, a->b)."""
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    return (sim.argmax(1) == torch.arange(len(a), device=a.device)).float().mean()
