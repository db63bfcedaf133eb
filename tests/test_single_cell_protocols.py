"""The single-cell evaluation and training protocols as the papers and reference code define them.

UnitedNet: R^2 averaged uniformly over features, NMI normalized geometrically, both schedules in every
epoch, the clustering step updating only fusion and heads, head losses averaged. SAILERX: the pairwise KL
added once per batch (so 1 / B per cell), the decoder conditioned on the encoded modality's depth. Splits:
an empty validation or test split is a one-line error naming the setting, never other cells.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from _single_cell_data import make_cite
from _trainer import quiet_trainer
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.single_cell.datamodule import SingleCellDataModule
from plexlab.modules.single_cell.sailerx import SAILERX
from plexlab.modules.single_cell.unitednet import R2Accumulator, UnitedNet, group_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_UNITEDNET = {"hidden_dims": [16], "latent_dim": 4, "projector_dim": 4, "n_heads": 2, "lr": 1e-2}


# ---- UnitedNet metrics -----------------------------------------------------------------------------------


def test_r2_is_the_uniform_average_over_features() -> None:
    # feature 0 (SS_tot 200) predicted exactly, feature 1 (SS_tot 2) with SS_res 8:
    # per feature 1 and 1 - 8/2 = -3, so uniformly -1; pooled 1 - 8/202 = 0.960
    y = torch.tensor([[-10.0, -1.0], [10.0, 1.0]])
    pred = torch.tensor([[-10.0, 1.0], [10.0, -1.0]])
    acc = R2Accumulator()
    acc.update(pred[:1], y[:1])
    acc.update(pred[1:], y[1:])
    assert acc.compute() == pytest.approx(-1.0)
    assert acc.compute("variance_weighted") == pytest.approx(1 - 8 / 202)


def test_r2_streams_to_scikit_learn_including_constant_features() -> None:
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    y = rng.normal(size=(30, 4)) * [1.0, 5.0, 0.2, 1.0]
    y[:, 3] = 2.5  # constant: scikit-learn scores it 0 unless predicted exactly
    pred = y + rng.normal(size=y.shape) * [0.5, 1.0, 0.5, 0.1]
    acc = R2Accumulator()
    for part in np.array_split(np.arange(30), 4):
        acc.update(torch.tensor(pred[part]), torch.tensor(y[part]))
    for how in ("uniform_average", "variance_weighted"):
        assert acc.compute(how) == pytest.approx(r2_score(y, pred, multioutput=how), rel=1e-9)


def test_nmi_is_normalized_geometrically() -> None:
    labels, pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    # joint (label, group): (0,0) 1/4, (0,1) 1/4, (1,1) 1/2; marginals (1/2, 1/2) and (1/4, 3/4)
    mi = 0.25 * math.log(0.25 / (0.5 * 0.25)) + 0.25 * math.log(0.25 / (0.5 * 0.75))
    mi += 0.5 * math.log(0.5 / (0.5 * 0.75))
    h_labels = math.log(2)
    h_pred = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    out = group_metrics(pred, labels, supervised=False)
    assert out["nmi"] == pytest.approx(mi / math.sqrt(h_labels * h_pred), rel=1e-9)
    arithmetic = group_metrics(pred, labels, supervised=False, nmi_average="arithmetic")["nmi"]
    assert arithmetic == pytest.approx(mi / ((h_labels + h_pred) / 2), rel=1e-9)
    assert out["acc"] == pytest.approx(0.75)  # Hungarian: group 0 -> label 0, group 1 -> label 1


@pytest.fixture
def cite(tmp_path: Path) -> SingleCellDataModule:
    dm = SingleCellDataModule(
        str(make_cite(tmp_path / "cite.h5mu", n=150)),
        modalities=["rna", "adt"],
        transforms={"rna": "log1p", "adt": "clr"},
        cell_type_key="rna:cell_type",
        batch_size=32,
    )
    dm.setup("fit")
    return dm


def test_primary_metric_is_scikit_learns_r2_of_the_validation_cells(cite: SingleCellDataModule) -> None:
    from sklearn.metrics import normalized_mutual_info_score, r2_score

    pl.seed_everything(0)
    model = UnitedNet(**cite.model_kwargs(), supervised=False, n_groups=3, **TINY_UNITEDNET)
    trainer = quiet_trainer(max_epochs=3)
    trainer.fit(model, cite)
    model.eval()
    ys, preds, groups, labels = [], [], [], []
    with torch.no_grad():
        for batch in cite.val_dataloader():
            ys.append(batch.x["adt"].numpy())
            preds.append(model.translate("rna", "adt", batch.x["rna"]).numpy())
            groups.append(model.predict_groups(batch).numpy())
            labels.append(batch.label.numpy())
    y, pred = np.concatenate(ys), np.concatenate(preds)
    uniform, pooled = r2_score(y, pred), r2_score(y, pred, multioutput="variance_weighted")
    assert abs(uniform - pooled) > 1e-3  # the case tells the two apart
    m = trainer.callback_metrics
    assert m["val/r2_rna_to_adt"].item() == pytest.approx(uniform, abs=1e-5)
    nmi = normalized_mutual_info_score(
        np.concatenate(labels), np.concatenate(groups), average_method="geometric"
    )
    assert m["val/nmi"].item() == pytest.approx(nmi, abs=1e-6)


# ---- UnitedNet schedules ---------------------------------------------------------------------------------


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _moved(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.named_parameters())


def _fit_one_batch(model: UnitedNet, dm: SingleCellDataModule, epochs: int) -> None:
    trainer = quiet_trainer(max_epochs=epochs, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model, dm)


def test_every_epoch_runs_translation_then_group_identification(cite: SingleCellDataModule) -> None:
    pl.seed_everything(0)
    model = UnitedNet(**cite.model_kwargs(), supervised=True, **TINY_UNITEDNET)
    decoders, heads = _params(model.decoders), _params(model.heads)
    _fit_one_batch(model, cite, epochs=1)  # one epoch of one batch
    assert _moved(decoders, model.decoders), "the translation schedule did not run"
    assert _moved(heads, model.heads), "the group schedule did not run in the same epoch"


@pytest.mark.parametrize("supervised", [False, True])
def test_group_step_updates_what_the_reference_schedule_does(
    cite: SingleCellDataModule, supervised: bool
) -> None:
    """With every translation weight 0 the translation step has zero gradients (Adam leaves the weights),
    so whatever moves, the group step moved: clustering trains fusion and heads only, classification also
    the encoders; neither trains the decoders."""
    pl.seed_everything(0)
    zero = {"recon_weight": 0.0, "translation_weight": 0.0, "contrastive_weight": 0.0, "gan_weight": 0.0}
    model = UnitedNet(
        **cite.model_kwargs(), supervised=supervised, n_groups=3, **TINY_UNITEDNET, fusion="dimension", **zero
    )
    encoders, decoders, heads = _params(model.encoders), _params(model.decoders), _params(model.heads)
    fusion = model.fusion_logits.detach().clone()
    _fit_one_batch(model, cite, epochs=2)
    assert _moved(heads, model.heads)
    assert not torch.equal(fusion, model.fusion_logits)
    assert not _moved(decoders, model.decoders)
    assert _moved(encoders, model.encoders) == supervised


def test_with_autoencoder_option_keeps_the_earlier_group_schedule(cite: SingleCellDataModule) -> None:
    pl.seed_everything(0)
    model = UnitedNet(
        **cite.model_kwargs(),
        supervised=False,
        n_groups=3,
        **TINY_UNITEDNET,
        gan_weight=0.0,
        group_schedule="with_autoencoder",
    )
    translation = model.translation_losses

    def no_translation(batch):  # zero gradients: only the group step can move the autoencoder
        out, fakes = translation(batch)
        return {**out, "loss": 0.0 * out["loss"]}, fakes

    model.translation_losses = no_translation  # type: ignore[method-assign]
    encoders, decoders = _params(model.encoders), _params(model.decoders)
    _fit_one_batch(model, cite, epochs=1)
    assert _moved(encoders, model.encoders) and _moved(decoders, model.decoders)


def test_head_losses_are_averaged_over_heads(cite: SingleCellDataModule) -> None:
    pl.seed_everything(0)
    model = UnitedNet(**cite.model_kwargs(), supervised=True, **{**TINY_UNITEDNET, "n_heads": 3})
    out = model.group_losses(next(iter(cite.train_dataloader())))
    assert out["heads"].shape == (3,)
    assert out["loss"].item() == pytest.approx(out["heads"].mean().item(), rel=1e-6)


# ---- SAILERX ---------------------------------------------------------------------------------------------


def test_sailerx_pairwise_kl_enters_once_per_batch() -> None:
    values = {"recon": 2.0, "kl": 3.0, "invariance": 5.0, "align": 0.01, "n_cells": 4.0}
    parts = {k: torch.tensor(v) for k, v in values.items()}
    dims = {"modality_dims": {"a": 3, "b": 2}, "latent_dim": 2, "invariance_weight": 0.5}
    reference = SAILERX(**dims, alignment_weight=100)
    # per cell: recon + beta * (kl + lambda * pairwise / B) + gamma * align, with B = 4 cells
    assert reference.total(parts, 0.4).item() == pytest.approx(2 + 0.4 * (3 + 0.5 * 5 / 4) + 100 * 0.01)
    per_cell = SAILERX(**dims, alignment_weight=100, invariance_scale="per_cell")
    assert per_cell.total(parts, 0.4).item() == pytest.approx(2 + 0.4 * (3 + 0.5 * 5) + 100 * 0.01)


def test_sailerx_decoder_depth_is_the_encoded_modalitys(tmp_path: Path) -> None:
    import mudata as md

    path = make_cite(tmp_path / "cite.h5mu", n=60)
    # adt first: the library modality (by default the first) is not the encoded rna
    dm = SingleCellDataModule(
        str(path), modalities=["adt", "rna"], transforms={"rna": "binary", "adt": "clr"}, batch_size=60
    )
    dm.setup("fit")
    rna = np.asarray(md.read_h5mu(path)["rna"].X.sum(axis=1)).ravel().astype(np.float64)
    log_rna = np.log(rna)
    expected = (log_rna - log_rna.mean()) / log_rna.std()
    batch = dm.make_batch(np.arange(60))
    model = SAILERX(**dm.model_kwargs(), encoded_modality="rna", group_hidden=[8, 4], latent_dim=2)
    assert np.allclose(model.covariates(batch)[:, 0].numpy(), expected, atol=1e-5)
    library = SAILERX(**dm.model_kwargs(), encoded_modality="rna", depth_covariate="library", latent_dim=2)
    assert torch.equal(library.covariates(batch)[:, 0], batch.library)
    assert not np.allclose(batch.library.numpy(), expected, atol=1e-2)  # the case tells them apart


# ---- splits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"val_fraction": 0.01}, "data.val_fraction"),
        ({"test_fraction": 0.0}, "data.test_fraction"),
        ({"split": "groups", "split_key": "rna:cell_type", "val_groups": []}, "data.val_groups"),
        ({"split": "groups", "split_key": "rna:cell_type", "test_fraction": 0.0}, "data.test_fraction"),
    ],
)
def test_empty_split_is_an_error_naming_the_setting(tmp_path: Path, kwargs: dict, key: str) -> None:
    path = make_cite(tmp_path / "cite.h5mu", n=40)
    dm = SingleCellDataModule(str(path), modalities=["rna", "adt"], **kwargs)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert err.value.source == key
    assert "would be empty" in str(err.value) and "cite.h5mu" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_splits_are_disjoint_and_never_borrowed(tmp_path: Path) -> None:
    dm = SingleCellDataModule(str(make_cite(tmp_path / "cite.h5mu", n=40)), modalities=["rna", "adt"])
    dm.setup("fit")
    val = np.concatenate([b.index.numpy() for b in dm.val_dataloader()])
    test = np.concatenate([b.index.numpy() for b in dm.test_dataloader()])
    assert sorted(val) == sorted(dm.val_idx) and sorted(test) == sorted(dm.test_idx)
    assert not set(val) & set(test) and not (set(val) | set(test)) & set(dm.train_idx)


def test_empty_split_through_the_cli_is_one_line_exit_2(workdir: Path, capsys) -> None:
    from _bad_input_runs import run_bad, single_cell

    def build(tmp: Path):
        path = make_cite(tmp / "cite.h5mu", n=40)
        config = single_cell(path, modalities=["rna", "adt"], val_fraction=0.01)
        return config, ["exp.yaml", "data.val_fraction", "0.4 of 40 cells rounds to 0", "cite.h5mu"]

    run_bad(workdir, capsys, build)
