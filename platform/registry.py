"""Names of models and data modules mapped to import strings, imported on first use.

Importing lazily keeps `plexlab --help` fast and confines a missing optional dependency to the model that
needs it. Third-party packages add entries through the `plexlab.models` / `plexlab.datamodules` entry points.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points

from plexlab import contract
from plexlab.errors import RegistryError


@dataclass(frozen=True)
class Entry:
    """One registered class: its name, where it lives, and a one-line summary."""

    name: str
    target: str  # "package.module:ClassName"
    summary: str
    extra: str | None = None  # the pip extra that provides its optional dependencies

    def load(self) -> type:
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = f" (pip install 'plexlab[{self.extra}]')" if self.extra else ""
            raise RegistryError(f"{self.name}: cannot import {module_name}: {exc}{hint}") from exc
        try:
            return getattr(module, attr)
        except AttributeError as exc:
            raise RegistryError(f"{self.name}: {module_name} has no {attr}") from exc


_M = "plexlab.modules"
_D = "plexlab.datamodules"

MODELS: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry(
            "hypergcl",
            f"{_M}.hypergraph.hypergcl:HyperGCL",
            "HyperGCL: hypergraph contrastive learning (AllDeepSets)",
        ),
        Entry(
            "node_mlp",
            f"{_M}.hypergraph.node_mlp:NodeMLP",
            "MLP on node features: the baseline for node classification",
        ),
        Entry(
            "protein_mmcl",
            f"{_M}.protein.mmcl:ProteinMMCL",
            "ESM-2 + relational GNN, contrastive pretraining with domain-informed views",
            "protein",
        ),
        Entry(
            "protein_function",
            f"{_M}.protein.function:ProteinFunction",
            "EC/GO multi-label fine-tuning on the fused ESM + GNN embedding",
            "protein",
        ),
        Entry(
            "sailerx",
            f"{_M}.single_cell.sailerx:SAILERX",
            "SAILERX: invariant multi-modal single-cell VAE",
            "singlecell",
        ),
        Entry(
            "unitednet",
            f"{_M}.single_cell.unitednet:UnitedNet",
            "UnitedNet: explainable multi-task single-cell network",
            "singlecell",
        ),
        Entry(
            "svae",
            f"{_M}.single_cell.svae:SVAE",
            "sVAE+: sparse mechanism shift VAE for perturbations (and baselines)",
        ),
        Entry(
            "cpac",
            f"{_M}.affinity.cpac:CPAC",
            "CPAC: compound-protein affinity and contact prediction",
            "affinity",
        ),
        Entry(
            "affinity_mlp",
            f"{_M}.affinity.mlp:AffinityMLP",
            "fingerprint + composition MLP: the baseline for affinity",
            "affinity",
        ),
        Entry("e2", f"{_M}.e2:E2", "E2: regional contrastive CLIP for fashion retrieval", "vision"),
    ]
}

DATAMODULES: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry(
            "hypergraph",
            f"{_D}.hypergraph:HypergraphDataModule",
            "hypergraph node classification: hyperedges.json, features.npz, labels.npy, splits.json",
        ),
        Entry(
            "protein",
            f"{_D}.protein.datamodule:ProteinDataModule",
            "PDB/mmCIF structures + sequences, labels TSV, SCOP2/SIFTS families",
            "protein",
        ),
        Entry(
            "single_cell",
            f"{_D}.single_cell.datamodule:SingleCellDataModule",
            "AnnData (.h5ad) / MuData (.h5mu), in memory or backed",
            "singlecell",
        ),
        Entry(
            "perturbation",
            f"{_D}.single_cell.perturbation:PerturbationDataModule",
            "AnnData with perturbation labels, or the sparse-shift simulator",
        ),
        Entry(
            "affinity",
            f"{_D}.affinity.datamodule:AffinityDataModule",
            "SMILES + protein sequence + affinity TSV, optional contact maps",
            "affinity",
        ),
        Entry(
            "image_text",
            f"{_D}.image_text.datamodule:ImageTextDataModule",
            "a folder of images and a captions CSV",
            "vision",
        ),
    ]
}


def _with_entry_points(table: dict[str, Entry], group: str) -> dict[str, Entry]:
    """Built-in entries plus the plugins' ones; a plugin reusing a built-in name is refused, not shadowed."""
    found = {}
    for ep in entry_points(group=group):
        plugin = ep.dist.name if ep.dist else "a plugin"
        if ep.name in table:
            raise RegistryError(
                f"{plugin} registers {ep.name!r} in {group}, a built-in name: rename the plugin's entry point"
            )
        found[ep.name] = Entry(ep.name, ep.value, f"from {plugin}")
    return {**table, **found}


@cache
def models() -> dict[str, Entry]:
    """Every registered model, built-in and from `plexlab.models` entry points."""
    return _with_entry_points(MODELS, "plexlab.models")


@cache
def datamodules() -> dict[str, Entry]:
    """Every registered data module, built-in and from `plexlab.datamodules` entry points."""
    return _with_entry_points(DATAMODULES, "plexlab.datamodules")


def _lookup(table: dict[str, Entry], kind: str, name: str) -> Entry:
    if name not in table:
        raise RegistryError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table))}")
    return table[name]


@cache
def model_class(name: str) -> type:
    """The LightningModule class registered as `name`, checked against the model contract."""
    cls = _lookup(models(), "model", name).load()
    contract.check_model(name, cls)
    return cls


@cache
def datamodule_class(name: str) -> type:
    """The LightningDataModule class registered as `name`, checked against the data-module contract."""
    cls = _lookup(datamodules(), "data module", name).load()
    contract.check_datamodule(name, cls)
    return cls


def init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword parameters of `cls.__init__`, annotations resolved: the schema of a config section."""
    try:
        hints = typing.get_type_hints(cls.__init__, include_extras=True)
    except Exception:  # an annotation that cannot be resolved: fall back to what the signature says
        hints = {}
    params = inspect.signature(cls.__init__).parameters
    return {
        n: p.replace(annotation=hints.get(n, p.annotation))
        for n, p in params.items()
        if n != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
