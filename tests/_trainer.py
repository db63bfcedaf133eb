"""A quiet Lightning Trainer for tests and bench scripts (imported, not collected)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """`pl.Trainer(**kwargs)`; no logger, checkpoints, progress bar or model summary unless kwargs ask."""
    return pl.Trainer(**(QUIET | kwargs))
