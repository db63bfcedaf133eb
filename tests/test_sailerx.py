"""SAILERX: each loss term against a hand-computed value; a tiny model trains, embeds, decays its LR."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from _single_cell_data import make_cite
from _trainer import quiet_trainer
from plexlab.datamodules.single_cell.datamodule import SingleCellDataModule
from plexlab.modules.single_cell.sailerx import (
    SAILERX,
    alignment_loss,
    bernoulli_recon,
    depth_weights,
    gaussian_kl,
    kl_anneal,
    pairwise_kl,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bernoulli_recon_uses_pos_weight() -> None:
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # per entry: -(pw * y * log s + (1 - y) * log(1 - s)); pos_weight 20 multiplies only the positives
    cell0 = -20 * math.log(sig(0.0)) - math.log(1 - sig(2.0))
    cell1 = -20 * math.log(sig(-1.0)) - 20 * math.log(sig(0.5))
    assert bernoulli_recon(logits, target, 20.0).item() == pytest.approx((cell0 + cell1) / 2, rel=1e-5)


def test_gaussian_kl() -> None:
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)]])
    # 0.5 * sum(var + mu^2 - 1 - logvar) = 0.5 * ((1 + 1 - 1 - 0) + (4 + 0 - 1 - log 4))
    assert gaussian_kl(mu, logvar).item() == pytest.approx(0.5 * (1 + 3 - math.log(4.0)), rel=1e-6)


def test_pairwise_kl_is_the_mean_kl_over_ordered_pairs() -> None:
    mu = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])
    logvar = torch.tensor([[0.0, 0.5], [-0.3, 0.2], [0.1, -1.0]])

    def kl(i: int, j: int) -> float:
        vi, vj = logvar[i].exp(), logvar[j].exp()
        return float(0.5 * (vi / vj + (mu[i] - mu[j]) ** 2 / vj + logvar[j] - logvar[i] - 1).sum())

    expected = np.mean([kl(i, j) for i in range(3) for j in range(3)])
    assert pairwise_kl(mu, logvar).item() == pytest.approx(expected, rel=1e-5)
    # identical posteriors carry no information: the term is 0
    assert pairwise_kl(mu[:1].repeat(4, 1), logvar[:1].repeat(4, 1)).item() == pytest.approx(0.0, abs=1e-6)


def test_alignment_and_depth_weights() -> None:
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mu = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    w = torch.tensor([1.0, 0.5])
    # cos(ref) off-diagonal 0; cos(mu) off-diagonal 1/sqrt(2); two off-diagonal pairs with w_i w_j = 0.5,
    # summed over each cell's partner and averaged over the two cells
    expected = 2 * 0.5 * (0 - 1 / math.sqrt(2)) ** 2 / 2
    assert alignment_loss(ref, mu, w).item() == pytest.approx(expected, rel=1e-6)
    dw = depth_weights(torch.tensor([3.0, 2.0, 5.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert torch.allclose(dw, torch.tensor([1 / 3, 0.0, 1.0]))


def test_total_weights_each_term() -> None:
    model = SAILERX(modality_dims={"a": 3, "b": 2}, latent_dim=2, invariance_weight=0.5, alignment_weight=100)
    values = {"recon": 2.0, "kl": 3.0, "invariance": 5.0, "align": 0.01, "n_cells": 10.0}
    parts = {k: torch.tensor(v) for k, v in values.items()}
    # recon + beta * (kl + lambda * invariance / B) + gamma * align; beta anneals the KL and the invariance
    # term, which the reference adds once per batch of B cells
    assert model.total(parts, 0.4).item() == pytest.approx(2 + 0.4 * (3 + 0.5 * 5 / 10) + 100 * 0.01)
    assert model.total(parts, 0.0).item() == pytest.approx(2 + 100 * 0.01)


def test_kl_annealing_schedule() -> None:
    assert [kl_anneal(e, 10, 100, 0.5) for e in (0, 9, 10, 35, 60, 109, 110)] == [0, 0, 0, 0.5, 1.0, 1.0, 0]


def test_tiny_sailerx_trains_embeds_and_decays_lr_per_epoch(tmp_path: Path) -> None:
    path = make_cite(tmp_path / "cite.h5mu")
    dm = SingleCellDataModule(
        str(path),
        modalities=["rna", "adt"],
        transforms={"rna": "binary", "adt": "clr"},
        pca_components={"adt": 5},
        cell_type_key="rna:cell_type",
        batch_size=32,
        unpair_fraction=0.2,
    )
    dm.setup("fit")
    pl.seed_everything(0)
    model = SAILERX(
        **dm.model_kwargs(), group_hidden=[16, 8], latent_dim=4, warmup_epochs=1, kl_cycle_epochs=4, lr=1e-2
    )
    x = next(iter(dm.val_dataloader()))
    before = model.total(model.losses(x, sample=False), 1.0).item()
    trainer = quiet_trainer(max_epochs=4)
    trainer.fit(model, dm)
    assert trainer.callback_metrics["val/loss"].item() < before
    assert "val/library_corr" in trainer.callback_metrics
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(1e-2 * 0.995**4, rel=1e-6)  # stepped once per epoch, 4 epochs
    model.eval()
    assert model.embed(x).shape == (len(x), 4)
    preds = trainer.predict(model, dm)
    assert sum(len(p) for p in preds) == 120
