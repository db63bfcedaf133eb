"""The minibatch models' training loss is logged per step under its own name and as the epoch's mean; the
other terms per epoch only (fewer values written per step)."""

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers.logger import Logger
from plexlab.modules.step_logging import log_train_loss
from torch.utils.data import DataLoader, TensorDataset


class Recorder(Logger):
    """What Lightning hands a logger: (step, metric names) per call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, set[str]]] = []

    name, version = "recorder", "0"

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.calls.append((step, set(metrics)))

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass


class Tiny(pl.LightningModule):
    """A model that logs like the minibatch models: the loss with log_train_loss, a term per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        mse = torch.nn.functional.mse_loss(self.layer(x), y)
        log_train_loss(self, mse, len(x))
        self.log("train/mse", mse, on_step=False, on_epoch=True, batch_size=len(x))
        return mse

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_loss_is_logged_every_n_steps_and_per_epoch_under_stable_names(tmp_path):
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(12, 2), torch.randn(12, 1)), batch_size=2)  # 6 steps
    recorder = Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        logger=recorder,
        log_every_n_steps=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), data)
    per_step = [names - {"epoch"} for _, names in recorder.calls if "train/loss" in names]
    per_epoch = [names - {"epoch"} for _, names in recorder.calls if "train/loss_epoch" in names]
    assert per_step == [{"train/loss"}] * 6  # every second of 12 steps, nothing else beside it
    assert per_epoch == [{"train/loss_epoch", "train/mse"}] * 2
    assert not any(n.endswith("_step") for _, names in recorder.calls for n in names)
    assert {"train/loss", "train/loss_epoch", "train/mse"} <= set(trainer.callback_metrics)
