"""SVAE loss terms against hand-computed values, priors and masks per variant, metrics."""

import math

import numpy as np
import pytest
import torch
from plexlab.modules.single_cell.svae import SVAE, graph_scores, mean_correlation_coefficient
from plexlab.modules.single_cell.svae_losses import (
    beta_sparsity_log_prob,
    hard_gumbel_sigmoid,
    kl_to_prior,
    nb_log_likelihood,
)
from scipy import stats


def _model(variant="svae+", **kw):
    torch.manual_seed(0)
    return SVAE(
        n_genes=5, n_perturbations=3, n_train_cells=100, variant=variant, n_latent=2, n_hidden=8, **kw
    )


def test_nb_log_likelihood_by_hand():
    x, mu, theta = 2.0, 3.0, 4.0
    by_hand = (
        math.lgamma(x + theta)
        - math.lgamma(theta)
        - math.lgamma(x + 1)
        + theta * math.log(theta / (theta + mu))
        + x * math.log(mu / (theta + mu))
    )
    got = nb_log_likelihood(torch.tensor([x]), torch.tensor([mu]), torch.tensor([theta]))
    assert got.item() == pytest.approx(by_hand, abs=1e-5)
    # and scipy's parameterization: n = theta, p = theta / (theta + mu)
    xs = torch.tensor([0.0, 1.0, 7.0, 30.0])
    mus = torch.tensor([0.5, 2.0, 10.0, 25.0])
    thetas = torch.tensor([1.0, 0.3, 5.0, 50.0])
    ref = stats.nbinom.logpmf(xs.numpy(), thetas.numpy(), (thetas / (thetas + mus)).numpy())
    np.testing.assert_allclose(nb_log_likelihood(xs, mus, thetas).numpy(), ref, atol=1e-4)


def test_kl_to_perturbation_prior_by_hand():
    q_mean = torch.tensor([[1.0, 0.0]])
    q_logvar = torch.tensor([[0.0, math.log(4.0)]])
    p_mean = torch.tensor([[0.0, 1.0]])
    # dim 1: 0.5 * (1 + 1 - 1 - 0) ; dim 2: 0.5 * (4 + 1 - 1 - log 4)
    by_hand = 0.5 * 1.0 + 0.5 * (4.0 - math.log(4.0))
    assert kl_to_prior(q_mean, q_logvar, p_mean).item() == pytest.approx(by_hand, abs=1e-6)
    assert kl_to_prior(p_mean, torch.zeros(1, 2), p_mean).item() == pytest.approx(0.0, abs=1e-7)


def test_beta_sparsity_by_hand():
    logits = torch.tensor([0.0, math.log(3.0), 5.0])  # p = 0.5, 0.75, sigmoid(5)
    p = torch.sigmoid(logits)
    lam = 3.0
    by_hand = [math.log(lam) + (lam - 1) * math.log(1 - float(pi)) for pi in p]
    np.testing.assert_allclose(beta_sparsity_log_prob(logits, lam).numpy(), by_hand, rtol=1e-5)
    ref = torch.distributions.Beta(torch.tensor(1.0), torch.tensor(lam)).log_prob(p)
    np.testing.assert_allclose(beta_sparsity_log_prob(logits, lam).numpy(), ref.numpy(), rtol=1e-4)
    assert torch.isfinite(beta_sparsity_log_prob(torch.tensor([60.0]), lam)).all()


def test_sparsity_penalty_per_variant():
    m = _model("svae+", sparsity=3.0)
    with torch.no_grad():
        m.mask_logits.copy_(torch.tensor([[0.0, 1.0], [2.0, -1.0], [5.0, 0.5]]))
    p = torch.sigmoid(m.mask_logits.detach())
    expected = -(6 * math.log(3.0) + 2.0 * torch.log1p(-p).sum().item())
    assert m.sparsity_penalty(100.0).item() == pytest.approx(expected, rel=1e-5)
    s = _model("svae", sparsity=3.0)
    with torch.no_grad():
        s.mask_logits.copy_(m.mask_logits)
    assert s.sparsity_penalty(100.0).item() == pytest.approx(100.0 * 3.0 * p.mean().item(), rel=1e-5)
    for v in ("ivae", "vae"):
        assert _model(v).sparsity_penalty(100.0).item() == 0.0
    m.use_global_kl = False  # stage 2 of the transfer drops the global term
    assert m.sparsity_penalty(100.0).item() == 0.0


def test_objective_is_n_times_mean_plus_penalty():
    m = _model("svae+", sparsity=2.0, beta=0.5)
    m.eval()  # no dropout; batch-norm running stats
    batch = {
        "x": torch.tensor([[1.0, 0, 3, 2, 0], [0, 4, 1, 0, 2], [2, 2, 2, 2, 2]]),
        "library": torch.tensor([6.0, 7.0, 10.0]),
        "perturbation": torch.tensor([-1, 0, 2]),
    }
    torch.manual_seed(1)
    out = m.objective(batch)
    torch.manual_seed(1)
    terms = m.loss_terms(batch, sample_mask=True)
    expected = 100 * (terms["nll"] + 0.5 * terms["kl"]).mean() + m.sparsity_penalty(100.0)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # reconstruction term by hand from the decoder's mean and dispersion
    q_mean, q_logvar = m.encode(batch["x"])
    torch.manual_seed(1)
    z = q_mean + torch.randn_like(q_mean) * (0.5 * q_logvar).exp()
    mu, theta = m.decode(z, batch["library"])
    assert mu.sum(-1).detach().numpy() == pytest.approx([6.0, 7.0, 10.0], rel=1e-5)  # softmax x library
    ref = -stats.nbinom.logpmf(
        batch["x"].numpy(), theta.detach().numpy(), (theta / (theta + mu)).detach().numpy()
    )
    np.testing.assert_allclose(terms["nll"].detach().numpy(), ref.sum(-1), rtol=1e-4)


def test_prior_means_per_variant():
    a = torch.tensor([-1, 0, 2])
    for variant in ("svae+", "svae", "ivae", "vae"):
        m = _model(variant)
        pm = m.prior_mean(a, sample=False).detach()
        assert (pm[0] == 0).all()  # controls: N(0, I)
        if variant == "vae":
            assert (pm == 0).all()
        else:
            assert torch.allclose(pm[1:], m.mu_a.detach()[[0, 2]])  # logits 5: every mask on at first
    m = _model("svae+")
    m.frozen_mask = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    pm = m.prior_mean(a, sample=True).detach()
    mu = m.mu_a.detach()
    assert torch.equal(
        pm, torch.stack([torch.zeros(2), torch.tensor([mu[0, 0], 0.0]), torch.tensor([0.0, mu[2, 1]])])
    )


def test_hard_gumbel_sigmoid_is_binary_with_gradient():
    torch.manual_seed(0)
    logits = torch.tensor([-2.0, 0.0, 2.0]).repeat(20000, 1).requires_grad_(True)
    m = hard_gumbel_sigmoid(logits)
    values = m.detach()
    assert torch.all((values == 0) | ((values - 1).abs() < 1e-6))  # 0/1 up to the straight-through rounding
    np.testing.assert_allclose(
        m.detach().mean(0).numpy(), torch.sigmoid(logits[0]).detach().numpy(), atol=0.02
    )
    m.sum().backward()
    assert (logits.grad > 0).all()


def test_mcc_and_graph_scores():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 4))
    perm = [2, 0, 3, 1]
    z_hat = -3.0 * z[:, perm] + 1.0  # permuted, flipped, scaled: perfect recovery
    mcc, matched = mean_correlation_coefficient(z, z_hat)
    assert mcc == pytest.approx(1.0)
    assert [perm[j] for j in matched] == [0, 1, 2, 3]
    assert mean_correlation_coefficient(z, rng.normal(size=(500, 4)))[0] < 0.2
    true = np.array([[1, 0, 0], [0, 1, 1]])
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    s = graph_scores(true, pred)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)


def test_iwelbo_bounds_elbo():
    m = _model("svae+")
    m.eval()
    batch = {
        "x": torch.tensor([[1.0, 0, 3, 2, 0], [0, 4, 1, 0, 2]]),
        "library": torch.tensor([6.0, 7.0]),
        "perturbation": torch.tensor([-1, 1]),
    }
    torch.manual_seed(0)
    elbo, iw = m.elbo_iwelbo(batch, 200)
    assert elbo.shape == (2,) and (iw >= elbo).all()
