"""Perturbation data (cells x genes raw counts with a perturbation label per cell) for the sVAE family.

Reads an .h5ad (counts from ``X`` or a layer, labels from an obs key) or runs the sparse-shift simulator.
Cells of the perturbations kept for training (controls included) are split at random into train/val/test; the
cells of held-out perturbations (for the transfer experiment) never enter those splits and are halved into a
*fit* part (used to learn the held-out perturbation embeddings) and an *eval* part (held-out ELBO).

Batches are dicts of tensors: ``x`` (counts, float32), ``library`` (total counts of the cell),
``perturbation`` (index into the non-control perturbations, -1 for controls), ``index`` (row in the AnnData)
and, when the data carries ground truth (the simulator writes it), ``z_true``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import scipy.sparse as sp
import torch
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.single_cell.perturbation_sim import simulate_sparse_shift
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

# Labels treated as controls when control_label is not given.
DEFAULT_CONTROL_LABELS = (
    "control",
    "non-targeting",
    "non_targeting",
    "NT",
    "ctrl",
    "Control",
    "NonTargeting",
)


class _Range(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _Gather:
    """Collate a list of positions into one dict batch by fancy indexing (one copy per batch, not per
    cell)."""

    def __init__(self, tensors: dict[str, torch.Tensor], rows: np.ndarray) -> None:
        self.tensors = tensors
        self.rows = torch.as_tensor(rows, dtype=torch.long)

    def __call__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        idx = self.rows[torch.as_tensor(positions, dtype=torch.long)]
        return {k: v[idx] for k, v in self.tensors.items()}


def read_counts(path: Path, perturbation_key: str, layer: str | None) -> tuple[Any, np.ndarray, np.ndarray]:
    """Read and validate an .h5ad: returns (AnnData, dense float32 counts, labels as str). Raises
    DataError."""
    import anndata

    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        adata = anndata.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a corrupt file
        raise DataError(path, f"cannot read as .h5ad ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if perturbation_key not in adata.obs:
        cols = ", ".join(map(str, adata.obs.columns)) or "none"
        raise DataError(path, f"obs key '{perturbation_key}' not found (obs columns: {cols})")
    if layer is None:
        mat, where = adata.X, "X"
    elif layer not in adata.layers:
        keys = ", ".join(adata.layers.keys()) or "none"
        raise DataError(path, f"layer '{layer}' not found (layers: {keys})")
    else:
        mat, where = adata.layers[layer], f"layer '{layer}'"
    if mat is None:
        raise DataError(path, f"{where} is empty")
    counts = np.asarray(mat.toarray() if sp.issparse(mat) else mat, dtype=np.float64)
    bad = np.isnan(counts)
    problem = "NaN"
    if not bad.any():
        bad, problem = counts < 0, "negative count"
    if not bad.any():
        bad, problem = counts != np.round(counts), "non-integer count (raw counts expected)"
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(
            path,
            f"{where}: {problem} {counts[i, j]!r} at cell '{adata.obs_names[i]}', "
            f"gene '{adata.var_names[j]}'",
        )
    labels = adata.obs[perturbation_key]
    if labels.isna().any():
        i = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise DataError(path, f"obs '{perturbation_key}': missing label at cell '{adata.obs_names[i]}'")
    return adata, counts.astype(np.float32), labels.astype(str).to_numpy()


class PerturbationDataModule(pl.LightningDataModule):
    """Counts + perturbation labels for the sVAE family, from an .h5ad (``path``) or the simulator
    (``simulate``).

    ``control_label`` None: any of the common control names (control, non-targeting, NT, ctrl) found in the
    labels. Held-out perturbations: ``heldout_perturbations`` by name, else ``n_heldout`` drawn at random
    (seeded) from the non-control ones. Cells with zero total counts are dropped (the negative binomial mean
    would be zero).
    ``sim_*`` arguments are handed to ``simulate_sparse_shift`` when ``simulate`` is true.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        simulate: bool = False,
        perturbation_key: str = "perturbation",
        control_label: str | None = None,
        layer: str | None = None,
        heldout_perturbations: list[str] | None = None,
        n_heldout: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        sim_n_perturbations: int = 100,
        sim_n_cells_per_perturbation: int = 250,
        sim_n_control_cells: int = 250,
        sim_n_latents: int = 15,
        sim_n_genes: int = 100,
        sim_library_size: float = 2000.0,
        sim_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if (path is None) == (not simulate):
            # DataError (a ValueError) so that the platform reports it in one line, not a traceback.
            raise DataError("data", "give exactly one of `path` or `simulate: true`")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise DataError("data", "val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
        self._ready = False

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        hp = self.hparams
        if hp.simulate:
            try:
                adata = simulate_sparse_shift(
                    n_perturbations=hp.sim_n_perturbations,
                    n_cells_per_perturbation=hp.sim_n_cells_per_perturbation,
                    n_control_cells=hp.sim_n_control_cells,
                    n_latents=hp.sim_n_latents,
                    n_genes=hp.sim_n_genes,
                    library_size=hp.sim_library_size,
                    seed=hp.sim_seed,
                )
            except ValueError as exc:  # inconsistent sim_* sizes: a config mistake, reported in one line
                raise DataError("<simulated>", f"sim_* settings: {exc}") from None
            source: Path | str = "<simulated>"
            counts = np.asarray(adata.X, dtype=np.float32)
            labels = adata.obs["perturbation"].astype(str).to_numpy()
            if hp.perturbation_key != "perturbation":
                logger.info("simulated data: perturbation_key ignored, labels are in obs['perturbation']")
        else:
            source = Path(hp.path)
            adata, counts, labels = read_counts(source, hp.perturbation_key, hp.layer)
        self.source = str(source)

        if hp.control_label is not None:
            controls = {hp.control_label}
            if hp.control_label not in set(labels):
                raise DataError(
                    source, f"obs '{hp.perturbation_key}': control label '{hp.control_label}' not found"
                )
        else:
            controls = set(DEFAULT_CONTROL_LABELS) & set(labels)
        names = sorted(set(labels) - controls)
        if not names:
            raise DataError(source, f"obs '{hp.perturbation_key}': no perturbation other than controls")
        self.control_labels = sorted(controls)
        self.perturbation_names: list[str] = names
        index = {n: i for i, n in enumerate(names)}
        pert = np.array([index.get(lab, -1) for lab in labels], dtype=np.int64)

        library = counts.sum(1)
        keep = library > 0
        if not keep.all():
            logger.warning("%s: dropping %d cells with zero total counts", source, int((~keep).sum()))

        rng = np.random.default_rng(hp.seed)
        if hp.heldout_perturbations:
            unknown = [p for p in hp.heldout_perturbations if p not in index]
            if unknown:
                raise DataError(source, f"held-out perturbation '{unknown[0]}' not among the labels")
            heldout = sorted(index[p] for p in hp.heldout_perturbations)
        elif hp.n_heldout > 0:
            if hp.n_heldout >= len(names):
                raise DataError(source, f"n_heldout={hp.n_heldout} leaves no perturbation to train on")
            heldout = sorted(rng.choice(len(names), size=hp.n_heldout, replace=False).tolist())
        else:
            heldout = []
        self.heldout_index = np.asarray(heldout, dtype=np.int64)
        is_heldout = np.isin(pert, self.heldout_index) & (pert >= 0)

        seen = np.flatnonzero(keep & ~is_heldout)
        seen = seen[rng.permutation(len(seen))]
        n_val = round(hp.val_fraction * len(seen))
        n_test = round(hp.test_fraction * len(seen))
        self.split_rows = {
            "val": np.sort(seen[:n_val]),
            "test": np.sort(seen[n_val : n_val + n_test]),
            "train": np.sort(seen[n_val + n_test :]),
        }
        # Held-out cells: per perturbation, half to fit its embedding, half to evaluate the held-out ELBO.
        fit, ev = [], []
        for a in heldout:
            rows = np.flatnonzero(keep & (pert == a))
            rows = rows[rng.permutation(len(rows))]
            fit.append(rows[: len(rows) // 2])
            ev.append(rows[len(rows) // 2 :])
        self.split_rows["transfer_fit"] = np.sort(np.concatenate(fit)) if fit else np.zeros(0, np.int64)
        self.split_rows["transfer_eval"] = np.sort(np.concatenate(ev)) if ev else np.zeros(0, np.int64)

        self.tensors: dict[str, torch.Tensor] = {
            "x": torch.from_numpy(counts),
            "library": torch.from_numpy(library.astype(np.float32)),
            "perturbation": torch.from_numpy(pert),
            "index": torch.arange(len(labels)),
        }
        # Ground truth, when the file (or the simulator) carries it: latents and the perturbation-target
        # graph.
        self.true_targets: np.ndarray | None = None
        if "z_true" in adata.obsm and "target_graph" in adata.uns and "perturbation_names" in adata.uns:
            self.tensors["z_true"] = torch.as_tensor(np.asarray(adata.obsm["z_true"], dtype=np.float32))
            graph = np.asarray(adata.uns["target_graph"])
            row = {str(n): i for i, n in enumerate(adata.uns["perturbation_names"])}
            if all(n in row for n in names):
                self.true_targets = graph[[row[n] for n in names]].astype(np.int64)
        self.obs_names = [str(n) for n in adata.obs_names]
        self.n_genes = counts.shape[1]
        logger.info(
            "%s: %d cells, %d genes, %d perturbations (%d held out), controls %s; train/val/test %d/%d/%d",
            source,
            len(labels),
            self.n_genes,
            len(names),
            len(heldout),
            self.control_labels,
            len(self.split_rows["train"]),
            len(self.split_rows["val"]),
            len(self.split_rows["test"]),
        )

    def setup(self, stage: str | None = None) -> None:
        if not self._ready:  # idempotent: the platform calls setup("fit") before Lightning does
            self._load()
            self._ready = True

    # ------------------------------------------------------------------ model / platform hooks
    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the SVAE derived from the data."""
        return {
            "n_genes": self.n_genes,
            "n_perturbations": len(self.perturbation_names),
            "n_train_cells": len(self.split_rows["train"]),
        }

    @property
    def heldout_perturbations(self) -> list[str]:
        return [self.perturbation_names[i] for i in self.heldout_index]

    def sample_ids(self) -> list[str]:
        return list(self.obs_names)

    def loader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        """A loader over one split: train, val, test, transfer_fit, transfer_eval, or all (every cell)."""
        rows = np.arange(len(self.obs_names)) if split == "all" else self.split_rows[split]
        gen = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(
            _Range(len(rows)),
            batch_size=batch_size or self.hparams.batch_size,
            shuffle=shuffle,
            collate_fn=_Gather(self.tensors, rows),
            num_workers=self.hparams.num_workers,
            generator=gen if shuffle else None,
            # a last training batch of one cell would break batch norm
            drop_last=shuffle and len(rows) % (batch_size or self.hparams.batch_size) == 1,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.loader("all")
