"""The contract between the platform and the models: what a model and a data module must and may provide.

The registry checks every class it loads (built-in or plugin) against the required parts and refuses a misfit
in one line; the runner asks for the optional hooks through the protocols below, never by guessing.

A model (a `lightning.pytorch.LightningModule`):
- must name the validation metric that picks its best epoch, `primary_metric` (e.g. "val/acc"), and whether
  higher or lower is better, `primary_mode` ("max" or "min"), as class attributes;
- takes its settings as typed `__init__` keyword arguments: the signature is the config schema of the `model`
  section. An argument annotated `pathlib.Path` (or `Path | None`) is a path: the config makes it absolute and
  checks that it exists;
- may provide `embed(batch) -> Tensor` (`plexlab embed` without a `predict_step`) and
  `export_artifacts(datamodule, out_dir)` (plots and tables the runner logs after a fit).

A data module (a `lightning.pytorch.LightningDataModule`):
- must provide `model_kwargs() -> dict`, the model arguments the data decides (input sizes, class counts),
  read after `setup("fit")`. A model takes the ones its signature names (a data module serves several
  models); a derived value that contradicts the experiment file is an error;
- takes its settings as typed `__init__` keyword arguments, paths declared as for models; an argument
  annotated `plexlab.datamodules.paths.OutputPath` is a path that the data module may create (a cache folder);
- may provide `summary() -> dict` (what `plexlab data check` prints: counts, modalities, labels, splits),
  `skip_table() -> Counter` (records it rejected, by reason), `sample_ids() -> list[str]` (the rows of
  `plexlab embed`) and
  `write_embedding(values, out, model_name) -> Path` (the embedding in a copy of the input, e.g. AnnData).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import lightning.pytorch as pl
import numpy as np
import torch
from plexlab.errors import RegistryError

Mode = Literal["min", "max"]
MODES: tuple[Mode, ...] = ("min", "max")


@runtime_checkable
class Model(Protocol):
    """Required of every registered model class (besides being a LightningModule)."""

    primary_metric: ClassVar[str]
    primary_mode: ClassVar[Mode]


@runtime_checkable
class Embeds(Protocol):
    """Optional: a representation model's embedding of a batch, one row per sample."""

    def embed(self, batch: Any) -> torch.Tensor: ...


@runtime_checkable
class ExportsArtifacts(Protocol):
    """Optional: files a person would rather look at than read (plots, tables), written after a fit."""

    def export_artifacts(self, datamodule: pl.LightningDataModule, out_dir: Path) -> None: ...


@runtime_checkable
class DataModule(Protocol):
    """Required of every registered data module class (besides being a LightningDataModule)."""

    def model_kwargs(self) -> dict[str, Any]: ...


@runtime_checkable
class HasSampleIds(Protocol):
    """Optional: the ids of the samples `predict` yields, in order (rows of an embedding file)."""

    def sample_ids(self) -> list[str]: ...


@runtime_checkable
class Summarizes(Protocol):
    """Optional: what the data module read, for `plexlab data check` (after `setup("fit")`)."""

    def summary(self) -> dict[str, Any]: ...


@runtime_checkable
class ReportsSkips(Protocol):
    """Optional: the records the reader rejected, counted by reason."""

    def skip_table(self) -> Counter: ...


@runtime_checkable
class WritesEmbedding(Protocol):
    """Optional: write an embedding into a copy of the input (AnnData .obsm, say) instead of an .npz."""

    def write_embedding(
        self, embedding: np.ndarray | torch.Tensor, out_path: str | Path, model: str
    ) -> Path: ...


def check_model(name: str, cls: type) -> None:
    """Refuse a model class that does not fit the contract, in one line naming it and what is missing."""
    where = f"model {name!r} ({cls.__module__}.{cls.__qualname__})"
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise RegistryError(f"{where} is not a lightning.pytorch.LightningModule")
    metric = _inherited(cls, "primary_metric")
    if not isinstance(metric, str) or not metric:
        raise RegistryError(
            f"{where} has no primary_metric class attribute (the metric that picks the best epoch)"
        )
    mode = _inherited(cls, "primary_mode")
    if mode not in MODES:
        raise RegistryError(f"{where}: primary_mode must be 'min' or 'max', not {mode!r}")


def check_datamodule(name: str, cls: type) -> None:
    """Refuse a data module class that does not fit the contract, in one line."""
    where = f"data module {name!r} ({cls.__module__}.{cls.__qualname__})"
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningDataModule)):
        raise RegistryError(f"{where} is not a lightning.pytorch.LightningDataModule")
    if not callable(_inherited(cls, "model_kwargs")):
        raise RegistryError(f"{where} has no model_kwargs() method (the model arguments its data decides)")


def primary(cls: type) -> tuple[str, Mode]:
    """The metric and mode that pick a model's best epoch (the class passed `check_model`)."""
    return cls.primary_metric, cls.primary_mode  # type: ignore[attr-defined]


def _inherited(cls: type, attribute: str) -> Any:
    """A class attribute from the class or its bases, or None (the classes are checked, not instantiated)."""
    for klass in cls.__mro__:
        if attribute in klass.__dict__:
            return klass.__dict__[attribute]
    return None
