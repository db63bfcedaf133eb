"""sVAE+ loss terms: negative binomial likelihood, KL to the shifted prior, Beta sparsity prior, mask sample.

Shared by the model (``svae``) and its transfer to held-out perturbations (``svae_transfer``), so that the
transfer needs nothing from the model's module at run time (the model imports the transfer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nb_log_likelihood(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Elementwise log NB(x; mean mu, inverse dispersion theta)."""
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
        + theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
    )


def kl_to_prior(q_mean: torch.Tensor, q_logvar: torch.Tensor, p_mean: torch.Tensor) -> torch.Tensor:
    """KL(N(q_mean, exp(q_logvar)) || N(p_mean, I)), summed over the last dimension."""
    return 0.5 * (q_logvar.exp() + (q_mean - p_mean) ** 2 - 1.0 - q_logvar).sum(-1)


def beta_sparsity_log_prob(logits: torch.Tensor, lam: float) -> torch.Tensor:
    """Elementwise log Beta(sigmoid(logits); 1, lam) = log(lam) + (lam - 1) * log(1 - sigmoid(logits)).

    Written with ``log(1 - sigmoid(l)) = -softplus(l)`` so it stays finite for large logits.
    """
    return math.log(lam) - (lam - 1.0) * F.softplus(logits)


def hard_gumbel_sigmoid(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """A 0/1 sample of Bernoulli(sigmoid(logits)) with the straight-through gradient of the relaxed sample."""
    u = torch.rand_like(logits).clamp(1e-6, 1.0 - 1e-6)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + soft - soft.detach()
