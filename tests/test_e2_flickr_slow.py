"""Headline reproduction (slow): E2, tiny random CLIP, Flickr8k subset, from sweeps/e2_flickr8k.yaml.

Runs with a bare Lightning Trainer (the same classes and arguments `plexlab fit sweeps/e2_flickr8k.yaml` uses)
and checks held-out retrieval well above chance: 100 test images, recall@10 by chance = 10/100.
Run: .venv/bin/pytest tests/test_e2_flickr_slow.py -m slow -s -p no:cacheprovider
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import yaml
from _trainer import quiet_trainer
from plexlab.datamodules.image_text.datamodule import ImageTextDataModule
from plexlab.modules.e2 import E2

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def run_flickr(overrides: dict[str, Any] | None = None, seed: int | None = None) -> dict[str, float]:
    """Fit on the experiment file's settings (model overrides, training seed), test the last epoch."""
    cfg = yaml.safe_load((ROOT / "sweeps" / "e2_flickr8k.yaml").read_text())
    model_args = {k: v for k, v in cfg["model"].items() if k != "name"} | (overrides or {})
    data_args = {k: v for k, v in cfg["data"].items() if k != "name"}
    data_args["path"] = str((ROOT / data_args["path"]).resolve())
    pl.seed_everything(cfg["seed"] if seed is None else seed)
    dm = ImageTextDataModule(**data_args)
    dm.setup("fit")
    model = E2(**dm.model_kwargs(), **model_args)
    trainer = quiet_trainer(max_epochs=cfg["trainer"]["max_epochs"], accelerator="cpu", deterministic=True)
    trainer.fit(model, dm)
    return trainer.test(model, dm, verbose=False)[0]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")  # tiny model: one thread is much faster on a shared box
def test_e2_flickr_headline(shared_data: Path) -> None:
    metrics = run_flickr()
    log.info("e2 flickr8k_1k test metrics: %s", metrics)
    print({k: round(v, 3) for k, v in metrics.items()})
    chance = 10 / 100
    assert metrics["test/t2i_r10"] > 1.5 * chance and metrics["test/i2t_r10"] > 1.5 * chance
