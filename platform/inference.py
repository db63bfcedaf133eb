"""Using a trained checkpoint: evaluate it on the test split (its own MLflow run) or embed every sample.

Weights load with `torch.load(..., weights_only=True)`: a checkpoint that would unpickle objects is refused.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from plexlab import contract, run_observe, schema, tracking
from plexlab.config import ExperimentConfig, load
from plexlab.errors import ConfigError
from plexlab.train import FitResult, build, make_trainer, primary, run_tags


def test(
    config: str | Path | dict | ExperimentConfig,
    ckpt: str | Path,
    overrides: dict[str, Any] | list[str] | None = None,
    *,
    track: bool = True,
    allow_tracking_uri: bool = False,
) -> FitResult:
    """Evaluate a checkpoint on the test split; recorded as its own MLflow run (tag plexlab.kind=test)."""
    cfg = load(config, overrides)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    uri = tracking.trusted_uri(cfg.tracking.uri, cfg.source, allow_other_host=allow_tracking_uri)
    if track:
        tracking.check(uri)
    dm, model = build(cfg)
    load_weights(model, Path(ckpt), cfg.source)
    run = None
    if track:
        tags = {**run_tags(cfg, kind=schema.TEST), schema.CHECKPOINT: str(Path(ckpt).resolve())}
        run = tracking.create_run(uri, cfg.name, tags=tags)
    workdir = Path(tempfile.mkdtemp(prefix="plexlab-test-"))
    with tracking.ending(run) if run else contextlib.nullcontext(), run_observe.observing(run, cfg):
        if run is not None:
            run.log_params(cfg.flat_params())
        trainer = make_trainer(cfg, workdir=workdir, logger=run.logger(cfg.name) if run else None)
        results = trainer.test(model, datamodule=dm, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    metric, _ = primary(cfg)
    return FitResult(metrics, run.run_id if run else None, Path(ckpt), cfg, uri if run else None, metric)


def predict(
    config: str | Path | dict | ExperimentConfig,
    ckpt: str | Path,
    overrides: dict[str, Any] | list[str] | None = None,
) -> tuple[list[str], np.ndarray, pl.LightningDataModule]:
    """Embeddings (or predictions) of every sample, with the sample ids in the same order."""
    cfg = load(config, overrides)
    dm, model = build(cfg)
    load_weights(model, Path(ckpt), cfg.source)
    trainer = make_trainer(cfg, workdir=Path(tempfile.mkdtemp(prefix="plexlab-embed-")))
    if not _overrides(model, "predict_step"):
        if not isinstance(model, contract.Embeds):
            raise ConfigError(
                cfg.source, "model.name", f"{cfg.model_name} has neither embed nor predict_step"
            )
        model.predict_step = lambda batch, batch_idx, dataloader_idx=0: model.embed(batch)
    if not isinstance(dm, contract.HasSampleIds):
        raise ConfigError(cfg.source, "data.name", f"{cfg.data_name} does not name its samples (sample_ids)")
    dm.setup("predict")
    parts = trainer.predict(model, datamodule=dm)
    out = torch.cat([p.detach().float().cpu() for p in parts]).numpy()
    return dm.sample_ids(), out, dm


def _overrides(model: pl.LightningModule, method: str) -> bool:
    return getattr(type(model), method) is not getattr(pl.LightningModule, method)


def load_weights(model: pl.LightningModule, ckpt: Path, source: str) -> None:
    """Load a Lightning checkpoint's weights without unpickling arbitrary objects."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(source, "--ckpt", f"no such checkpoint: {ckpt}") from None
    except Exception as exc:
        problem = f"{ckpt} is not a loadable checkpoint: {exc}".splitlines()[0]
        raise ConfigError(source, "--ckpt", problem) from None
    weights = state.get("state_dict", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise ConfigError(source, "--ckpt", f"{ckpt} holds no state_dict")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(source, "--ckpt", f"{ckpt} does not fit this model config: {first}") from None
