"""Test accuracy of a hypergraph node classifier after a short full-batch fit (imported, not collected)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from _trainer import quiet_trainer
from plexlab.datamodules.hypergraph import HypergraphDataModule


def fit_test_accuracy(cls: type[pl.LightningModule], folder: Path, epochs: int = 200, **kwargs: Any) -> float:
    """Test accuracy after `epochs` full-batch epochs (no validation loop: nothing here selects on it)."""
    pl.seed_everything(0, verbose=False)
    dm = HypergraphDataModule(str(folder), val_fraction=0.2)
    dm.setup("fit")
    model = cls(**dm.model_kwargs(), hidden=16, lr=1e-2, dropout=0.0, **kwargs)
    trainer = quiet_trainer(max_epochs=epochs, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    return trainer.test(model, datamodule=dm, verbose=False)[0]["test/acc"]
