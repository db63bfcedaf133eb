"""A tiny SVAE run learns: the loss falls, latent recovery beats a random baseline, the transfer step
helps."""

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from _trainer import quiet_trainer
from plexlab.datamodules.single_cell.perturbation import PerturbationDataModule
from plexlab.modules.single_cell.svae import SVAE, mean_correlation_coefficient

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_DATA = dict(
    simulate=True,
    sim_n_perturbations=12,
    sim_n_cells_per_perturbation=60,
    sim_n_control_cells=60,
    sim_n_latents=4,
    sim_n_genes=40,
    batch_size=128,
    sim_seed=3,
)
TINY_MODEL = dict(
    n_latent=4, n_hidden=32, transfer_retrain_epochs=2, transfer_fit_steps=200, n_importance_samples=20
)


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.epoch_losses: list[float] = []
        self._batch: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._batch.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_losses.append(float(np.mean(self._batch)))
        self._batch = []


def _fit(variant: str, epochs: int, **data):
    pl.seed_everything(0)
    dm = PerturbationDataModule(**{**TINY_DATA, **data})
    dm.setup("fit")
    model = SVAE(**dm.model_kwargs(), variant=variant, **TINY_MODEL)
    losses = _Losses()
    trainer = quiet_trainer(max_epochs=epochs, accelerator="cpu", callbacks=[losses])
    trainer.fit(model, dm)
    return model, dm, trainer, losses.epoch_losses


def test_tiny_run_learns_recovers_latents_and_transfers(tmp_path):
    model, dm, trainer, losses = _fit("svae+", 12, n_heldout=3)
    assert losses[-1] < 0.95 * losses[0]
    metrics = trainer.callback_metrics
    for key in ("val/elbo", "val/mcc", "val/target_f1", "val/mask_density"):
        assert key in metrics and torch.isfinite(metrics[key])
    # latent recovery beats a random representation of the same cells by a wide margin
    rows = dm.split_rows["val"]
    z_true = dm.tensors["z_true"][rows].numpy()
    random_mcc = mean_correlation_coefficient(z_true, np.random.default_rng(0).normal(size=z_true.shape))[0]
    assert float(metrics["val/mcc"]) > random_mcc + 0.3, (float(metrics["val/mcc"]), random_mcc)
    # embed: posterior means, one row per cell
    batch = next(iter(dm.predict_dataloader()))
    model.eval()
    assert model.embed(batch).shape == (len(batch["x"]), 4)

    # transfer to the 3 held-out perturbations
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.export_artifacts(dm, tmp_path)  # runs the transfer, writes the table and the mask plot
    assert (tmp_path / "masks.png").stat().st_size > 0 and (tmp_path / "transfer_summary.csv").exists()
    table = pd.read_csv(tmp_path / "transfer_elbo.csv")
    assert len(table) == 3 and set(table.perturbation) == set(dm.heldout_perturbations)
    # fitting the held-out shifts helps on average (a single tiny perturbation can go either way by noise)
    assert table.elbo_after.mean() > table.elbo_before.mean()
    assert table.iwelbo_after.mean() > table.iwelbo_before.mean()
    assert (table.iwelbo_after >= table.elbo_after - 1e-3).all()
    # the transfer works on a copy: the trained model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_baseline_variants_train():
    for variant in ("svae", "ivae", "vae"):
        _, _, trainer, losses = _fit(variant, 1)
        assert np.isfinite(losses).all() and torch.isfinite(trainer.callback_metrics["val/elbo"])
