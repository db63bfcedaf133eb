"""PBT mutates what the model has: a trial restored from another's checkpoint scales every optimizer group by
its own `lr` over the inherited one (the ratios between groups stay); rates PBT cannot apply are refused
before anything runs. Also the sweep's Tune checkpoint policy (`sweep.checkpoints_kept`)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from _experiment import tiny_config
from plexlab import config, sweep
from plexlab.errors import ConfigError
from plexlab.sweep_trial import TrialSpec, _ApplyMutatedLearningRate
from torch.utils.data import DataLoader, TensorDataset


class TwoRates(pl.LightningModule):
    """An encoder at `lr`, a head at a tenth of it, and a generator with its own optimizer at 3 x `lr`, like
    protein_mmcl's ESM group and hypergcl's generator."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.encoder, self.head, self.generator = (torch.nn.Linear(2, 2) for _ in range(3))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        (x,) = batch
        for optimizer in self.optimizers():
            optimizer.zero_grad()
        self.manual_backward(self.generator(self.head(self.encoder(x))).square().mean())
        for optimizer in self.optimizers():
            optimizer.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        lr = self.hparams.lr
        groups = [{"params": self.encoder.parameters()}, {"params": self.head.parameters(), "lr": lr / 10}]
        return [torch.optim.SGD(groups, lr=lr), torch.optim.SGD(self.generator.parameters(), lr=3 * lr)]


class Rates(pl.Callback):
    """Every group's rate, optimizer by optimizer, when training starts (after the callbacks before it)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen = [g["lr"] for o in trainer.optimizers for g in o.param_groups]


def train(model: pl.LightningModule, tmp_path: Path, epochs: int, ckpt: Path | None = None) -> Rates:
    rates = Rates()
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[_ApplyMutatedLearningRate(), rates],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=4)
    trainer.fit(model, data, ckpt_path=ckpt, weights_only=False)
    if ckpt is None:
        trainer.save_checkpoint(tmp_path / "donor.ckpt")
    return rates


def test_a_mutated_lr_scales_every_group_and_keeps_their_ratios(tmp_path: Path) -> None:
    assert train(TwoRates(lr=1.0e-2), tmp_path, 1).seen == pytest.approx([1.0e-2, 1.0e-3, 3.0e-2])
    # PBT exploits: the trial copies the donor's checkpoint and trains on with its own, doubled lr.
    seen = train(TwoRates(lr=2.0e-2), tmp_path, 2, ckpt=tmp_path / "donor.ckpt").seen
    assert seen == pytest.approx([2.0e-2, 2.0e-3, 6.0e-2])


def test_a_trial_resuming_its_own_checkpoint_keeps_its_rates(tmp_path: Path) -> None:
    train(TwoRates(lr=1.0e-2), tmp_path, 1)
    seen = train(TwoRates(lr=1.0e-2), tmp_path, 2, ckpt=tmp_path / "donor.ckpt").seen
    assert seen == pytest.approx([1.0e-2, 1.0e-3, 3.0e-2])


def test_pbt_refuses_a_rate_it_cannot_mutate(tmp_path: Path) -> None:
    raw = tiny_config(
        tmp_path,
        model={"name": "hypergcl", "hidden": 8, "views": "generative"},
        trainer={"max_epochs": 10},
        sweep={
            "space": {"model.generator_lr": {"loguniform": [1.0e-4, 1.0e-2]}},
            "scheduler": {"name": "pbt", "perturbation_interval": 2},
        },
    )
    with pytest.raises(ConfigError, match=r"sweep\.space\.model\.generator_lr: PBT cannot mutate"):
        config.load(raw)
    raw["sweep"]["space"] = {"model.lr": {"loguniform": [1.0e-4, 1.0e-2]}}
    assert config.load(raw).sweep.scheduler.name == "pbt"


def test_sweep_keeps_the_configured_number_of_tune_checkpoints(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path, sweep={"space": {"model.lr": {"loguniform": [1.0e-3, 1.0e-2]}}})
    assert sweep.checkpoints_kept(config.load(raw)) == 2
    raw["trainer"]["max_epochs"] = 5
    raw["sweep"]["scheduler"] = {"name": "pbt"}
    assert sweep.checkpoints_kept(config.load(raw)) is None  # PBT: a donor's checkpoints stay
    raw["sweep"]["checkpoints_kept"] = 5
    cfg = config.load(raw)
    spec = TrialSpec({}, "parent", 1, 0, 1, 1, False, str(tmp_path), str(tmp_path / "s"), 0)
    tuner = sweep._tuner(cfg, spec, "s", str(tmp_path), str(tmp_path / "s"), "val/acc", "max", False)
    assert tuner._local_tuner.get_run_config().checkpoint_config.num_to_keep == 5
    raw["sweep"]["checkpoints_kept"] = 0
    with pytest.raises(ConfigError, match=r"sweep\.checkpoints_kept"):
        config.load(raw)


@pytest.mark.slow
@pytest.mark.ray
def test_a_real_pbt_sweep_of_a_model_with_two_optimizers(workdir: Path) -> None:
    """hypergcl with generative views (a model optimizer at lr, the view generator's at generator_lr) under
    PBT: every trial ends FINISHED (with 2 Tune checkpoints kept, trials failed restoring a donor checkpoint
    its donor had already pruned)."""
    from _hypergraph_files import write_graph
    from mlflow.tracking import MlflowClient
    from plexlab import api, schema

    raw = {
        "name": "pbt-two-optimizers",
        "model": {"name": "hypergcl", "hidden": 8, "dropout": 0.0, "views": "generative"},
        "data": {"name": "hypergraph", "path": str(write_graph(workdir / "graph", n=40))},
        "trainer": {"max_epochs": 6, "accelerator": "cpu"},
        "sweep": {
            "num_samples": 3,
            "space": {"model.lr": {"loguniform": [1.0e-3, 3.0e-2]}},
            "scheduler": {"name": "pbt", "perturbation_interval": 2},
            "resources": {"cpu": 1},
            "storage": str(workdir / "sweeps"),
        },
    }
    result = api.sweep(raw)
    client = MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name("pbt-two-optimizers")
    kids = [r for r in client.search_runs([experiment.experiment_id]) if schema.PARENT_RUN_ID in r.data.tags]
    assert len(kids) == 3 and all(k.info.status == "FINISHED" for k in kids), [k.info.status for k in kids]
    assert result.best_metric is not None
