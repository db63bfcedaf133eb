"""UnitedNet: loss terms by hand; a tiny model learns cross-modal prediction; SHAP artifacts."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _single_cell_data import make_cite
from _trainer import quiet_trainer
from plexlab.datamodules.single_cell.datamodule import SingleCellDataModule
from plexlab.modules.single_cell.unitednet import (
    R2Accumulator,
    UnitedNet,
    balanced_cross_entropy,
    cauchy_schwarz_divergence,
    cross_modal_contrastive,
    hungarian_accuracy,
    lsgan_d_loss,
    lsgan_g_loss,
    negative_entropy,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_lsgan_losses() -> None:
    real, fake = torch.tensor([0.5, 1.0]), torch.tensor([0.0, 1.0])
    assert lsgan_d_loss(real, fake).item() == pytest.approx(0.5 * ((0.25 + 0) / 2 + (0 + 1) / 2))
    assert lsgan_g_loss(fake).item() == pytest.approx(0.5 * (1 + 0) / 2)


def test_contrastive_negatives_only_from_other_groups() -> None:
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    zb = torch.tensor([[1.0, 0.2], [0.1, 1.0], [-1.0, 1.0]])
    groups = torch.tensor([0, 0, 1])
    t = 0.1
    s = (F.normalize(za, dim=1) @ F.normalize(zb, dim=1).T / t).numpy()
    allowed = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 1]], bool)  # cells 0 and 1 share a group

    def nce(m: np.ndarray, ok: np.ndarray) -> float:
        return float(np.mean([math.log(np.exp(m[i][ok[i]]).sum()) - m[i, i] for i in range(3)]))

    expected = 0.5 * (nce(s, allowed) + nce(s.T, allowed.T))
    assert cross_modal_contrastive(za, zb, groups, t).item() == pytest.approx(expected, rel=1e-5)
    everyone = np.ones((3, 3), bool)
    expected_all = 0.5 * (nce(s, everyone) + nce(s.T, everyone))
    assert cross_modal_contrastive(za, zb, None, t).item() == pytest.approx(expected_all, rel=1e-5)


def test_balanced_cross_entropy_weights_rare_classes() -> None:
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    ce = [F.cross_entropy(logits[i : i + 1], labels[i : i + 1]).item() for i in range(4)]
    w = [4 / (2 * 3)] * 3 + [4 / (2 * 1)]  # n / (K * n_k)
    expected = sum(wi * c for wi, c in zip(w, ce, strict=True)) / sum(w)
    assert balanced_cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert balanced_cross_entropy(logits, torch.full((4,), -1)).item() == 0.0


def test_ddc_divergence_and_entropy() -> None:
    a = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    k = torch.tensor([[1.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 1.0]])
    an, kn = a.numpy().astype(np.float64), k.numpy().astype(np.float64)
    nom = an.T @ kn @ an
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = np.mean([nom[i, j] / math.sqrt(nom[i, i] * nom[j, j]) for i, j in pairs])
    assert cauchy_schwarz_divergence(a, k).item() == pytest.approx(expected, rel=1e-5)
    p = an.mean(0)
    assert negative_entropy(a).item() == pytest.approx(float((p * np.log(p)).sum()), rel=1e-5)


def test_hungarian_accuracy_and_r2() -> None:
    assert hungarian_accuracy(np.array([1, 1, 0, 0, 2]), np.array([0, 0, 1, 1, 1])) == pytest.approx(0.8)
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    y, pred = rng.normal(size=(20, 3)) * [1, 2, 3], rng.normal(size=(20, 3))
    acc = R2Accumulator()
    acc.update(torch.tensor(pred[:7]), torch.tensor(y[:7]))
    acc.update(torch.tensor(pred[7:]), torch.tensor(y[7:]))
    assert acc.compute() == pytest.approx(r2_score(y, pred), rel=1e-9)  # uniform over features
    assert acc.compute("variance_weighted") == pytest.approx(
        r2_score(y, pred, multioutput="variance_weighted"), rel=1e-9
    )


@pytest.mark.parametrize("supervised", [False, True])
def test_tiny_unitednet_predicts_across_modalities_and_explains(tmp_path: Path, supervised: bool) -> None:
    path = make_cite(tmp_path / "cite.h5mu", n=150)
    dm = SingleCellDataModule(
        str(path),
        modalities=["rna", "adt"],
        transforms={"rna": "log1p", "adt": "clr"},
        cell_type_key="rna:cell_type",
        batch_size=32,
    )
    dm.setup("fit")
    pl.seed_everything(0)
    model = UnitedNet(
        **dm.model_kwargs(),
        supervised=supervised,
        n_groups=3,
        hidden_dims=[32],
        latent_dim=8,
        projector_dim=8,
        n_heads=2,
        lr=1e-2,
        shap_cells=8,
        shap_background=8,
        shap_targets=2,
        shap_samples=8,
    )
    trainer = quiet_trainer(max_epochs=12)
    trainer.fit(model, dm)
    m = trainer.callback_metrics
    # the protein is a function of the cell group, which the RNA reveals: far better than the mean predictor
    assert m["val/r2_rna_to_adt"].item() > 0.3
    assert m["val/acc"].item() > 0.6
    if supervised:
        return
    out = tmp_path / "artifacts"
    model.export_artifacts(dm, out)
    names = {p.name for p in out.iterdir()}
    for f in (
        "unitednet_shap_groups.tsv",
        "unitednet_shap_groups.png",
        "unitednet_shap_rna_to_adt.tsv",
        "unitednet_shap_adt_to_rna.png",
        "unitednet_cross_modal_r2.tsv",
        "unitednet_umap.png",
    ):
        assert f in names
    rows = (out / "unitednet_shap_groups.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["feature", "group_0", "group_1", "group_2"] and len(rows) == 1 + 40 + 8
