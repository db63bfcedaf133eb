"""SingleCellDataModule: AnnData (`.h5ad`) and MuData (`.h5mu`) cells for the single-cell models.

One batch is a `SingleCellBatch`: per modality a dense float32 block of the batch's cells (the file's
matrices stay sparse; only the batch is densified), plus library size, batch (technical) covariate,
cell-type label, optional per-modality PCA coordinates and a paired mask. Batches are read as a whole: the
sampler draws a batch of cell indices, the dataset reads them sorted in one call, so backed mode
(`backed: true`, for files larger than memory) reads the same batches as in-memory mode, only from disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.single_cell.reader import (
    SingleCellFile,
    default_modalities,
    write_embedding_copy,
)
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

log = logging.getLogger(__name__)

Transform = Literal["none", "log1p", "clr", "binary"]


@dataclass
class SingleCellBatch:
    """A batch of cells. `x[mod]` holds the transformed features of each modality (cells x features).

    `library` is the standardized log library size (z-score over all cells) of the library modality;
    `log_depth[mod]` the raw log total counts of each modality, `depth[mod]` the same standardized over all
    cells; `batch` the technical-batch code (0 when there is none); `label` the cell-type code (-1 when
    unknown); `pca[mod]` PCA coordinates of the modalities asked for; `paired` is False for cells whose
    non-first modalities are missing (hybrid training); `index` the cells' positions in the file
    (data-module order).
    """

    x: dict[str, torch.Tensor]
    library: torch.Tensor
    log_depth: dict[str, torch.Tensor]
    batch: torch.Tensor
    label: torch.Tensor
    paired: torch.Tensor
    index: torch.Tensor
    pca: dict[str, torch.Tensor] = field(default_factory=dict)
    depth: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])


def _transform(x: np.ndarray, how: str) -> np.ndarray:
    """Per-cell transforms only, so a batch needs nothing from other batches."""
    if how == "none":
        return x
    if how == "binary":
        return (x > 0).astype(np.float32)
    if how == "log1p":  # normalize each cell to 10,000 counts, then log1p (scanpy's default)
        total = x.sum(axis=1, keepdims=True)
        return np.log1p(x / np.maximum(total, 1e-8) * 1e4).astype(np.float32)
    if how == "clr":  # centred log-ratio per cell (protein/ADT counts)
        lx = np.log1p(x)
        return (lx - lx.mean(axis=1, keepdims=True)).astype(np.float32)
    raise ValueError(how)


class _CellBatches(Dataset):
    """Indexed by a list of cell positions (one whole batch), so each batch is one sorted read."""

    def __init__(self, dm: SingleCellDataModule, cells: np.ndarray) -> None:
        self.dm = dm
        self.cells = np.asarray(cells, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, positions: list[int]) -> SingleCellBatch:
        return self.dm.make_batch(self.cells[np.asarray(positions, dtype=np.int64)])


class SingleCellDataModule(pl.LightningDataModule):
    """Cells of an `.h5ad` or `.h5mu` file, split by cells or by held-out groups.

    Args:
        path: the `.h5ad`/`.h5mu` file.
        modalities: MuData modality names (default: all, in file order); for `.h5ad`, `X` is the main matrix
            and other names are `obsm` keys.
        layers: per modality, the layer to read instead of `X` (e.g. `{RNA: counts}`).
        transforms: per modality, `none`, `log1p` (normalize to 1e4 counts, log1p), `clr` (per-cell centred
            log-ratio) or `binary`; default `none`.
        counts_required: modalities whose matrix must be non-negative integer counts (default: those with a
            transform other than `none`, and the library modality when the library size is computed).
        n_top_features: per modality, keep only the features of highest variance after the transform.
        feature_group_key: per modality, a var column (e.g. chromosome) that groups the features; the
            features are ordered group by group and the group sizes go to the model (`feature_groups`).
        pca_components: per modality, add PCA coordinates of the transformed features (`batch.pca[mod]`).
        cell_type_key, batch_key, library_size_key: obs columns (`<modality>:<column>` for a MuData modality's
            own obs). Without `library_size_key` the library size is the total count of `library_modality`
            (default: the first modality).
        split: `cells` (random fractions of cells) or `groups` (whole values of `split_key` held out).
        val_groups, test_groups: the held-out groups (default: groups drawn with `seed` until the fractions
            are reached).
        unpair_fraction: mark this fraction of training cells unpaired (`paired` False, their non-first
            modalities zeroed): hybrid-mode training on paired data. Files whose modalities hold different
            cells are rejected up front.
        backed: read rows from disk per batch instead of loading the matrices.
    """

    def __init__(
        self,
        path: Path | str,
        modalities: list[str] | None = None,
        layers: dict[str, str] | None = None,
        transforms: dict[str, Transform] | None = None,
        counts_required: list[str] | None = None,
        n_top_features: dict[str, int] | None = None,
        feature_group_key: dict[str, str] | None = None,
        pca_components: dict[str, int] | None = None,
        cell_type_key: str | None = None,
        batch_key: str | None = None,
        library_size_key: str | None = None,
        library_modality: str | None = None,
        split: Literal["cells", "groups"] = "cells",
        split_key: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        val_groups: list[str] | None = None,
        test_groups: list[str] | None = None,
        unpair_fraction: float = 0.0,
        backed: bool = False,
        batch_size: int = 200,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.path = Path(path)
        self.modality_names = modalities
        self.layers = dict(layers or {})
        self.transforms = dict(transforms or {})
        self.counts_required = counts_required
        self.n_top_features = dict(n_top_features or {})
        self.feature_group_key = dict(feature_group_key or {})
        self.pca_components = dict(pca_components or {})
        self.cell_type_key = cell_type_key
        self.batch_key = batch_key
        self.library_size_key = library_size_key
        self.library_modality = library_modality
        self.split = split
        self.split_key = split_key
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.val_groups = val_groups
        self.test_groups = test_groups
        self.unpair_fraction = unpair_fraction
        self.backed = backed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.file: SingleCellFile | None = None
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise DataError(self.path, "val_fraction and test_fraction must be in [0, 1) and sum below 1")

    # ---- setup -----------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.file is not None:
            return  # idempotent: everything below is computed once
        modalities = self.modality_names or self._default_modalities()
        unknown = [
            m
            for m in list(self.transforms) + list(self.n_top_features) + list(self.pca_components)
            if m not in modalities
        ]
        if unknown:
            raise DataError(self.path, f"modality {unknown[0]!r} is configured but not among {modalities}")
        f = SingleCellFile(self.path, modalities, self.layers, self.backed)
        self.modalities = modalities
        self.library_mod = self.library_modality or modalities[0]
        if self.library_mod not in modalities:
            raise DataError(self.path, f"library_modality {self.library_mod!r} is not among {modalities}")
        required = self.counts_required
        if required is None:
            required = [m for m in modalities if self.transforms.get(m, "none") != "none"]
            if self.library_size_key is None and self.library_mod not in required:
                required.append(self.library_mod)
        for m in required:
            if m not in modalities:
                raise DataError(self.path, f"counts_required: {m!r} is not among {modalities}")
        for m in modalities:
            f.check_values(m, require_counts=m in required)
        n = f.n_cells
        if n < 2:
            raise DataError(self.path, f"{n} cells; need at least 2")
        self.cell_names = f.cell_names
        self._obs(f)
        self._feature_stats(f)
        self.file = f
        self._pca(f)
        self._make_split()
        log.info("%s: %d cells, modalities %s", self.path, n, {m: self.n_features(m) for m in modalities})

    def _default_modalities(self) -> list[str]:
        return default_modalities(self.path)

    def _obs(self, f: SingleCellFile) -> None:
        n = f.n_cells

        def codes(key: str, what: str) -> tuple[np.ndarray, list[str]]:
            col = f.obs_column(key)
            if col.isna().any():
                bad = int(np.argmax(col.isna().to_numpy()))
                raise DataError(
                    self.path, f"obs key {key!r} ({what}): missing value at cell {f.cell_names[bad]!r}"
                )
            cat = pd.Categorical(col.astype(str))
            return cat.codes.astype(np.int64), [str(c) for c in cat.categories]

        self.labels, self.label_names = (np.full(n, -1, np.int64), [])
        if self.cell_type_key:
            self.labels, self.label_names = codes(self.cell_type_key, "cell type")
        self.batches, self.batch_names = (np.zeros(n, np.int64), ["all"])
        if self.batch_key:
            self.batches, self.batch_names = codes(self.batch_key, "batch")
        self.groups = None
        if self.split == "groups":
            if not self.split_key:
                raise DataError(self.path, "split: groups needs split_key (an obs column)")
            self.groups, self.group_names = codes(self.split_key, "split groups")
        if self.library_size_key:
            self.library_size = f.library_sizes(self.library_size_key)
        else:
            self.library_size = None  # computed from the counts in _feature_stats

    def _feature_stats(self, f: SingleCellFile) -> None:
        """One streaming pass per modality: totals per cell, and feature variances for feature selection."""
        self.columns: dict[str, np.ndarray | None] = {}
        self.log_depth: dict[str, np.ndarray] = {}
        for m in f.modalities:
            how = self.transforms.get(m, "none")
            n_vars = len(f.var_names[m])
            total = np.zeros(f.n_cells)
            s1, s2 = np.zeros(n_vars), np.zeros(n_vars)
            for cells, block in f.chunks(m):
                total[cells] = block.sum(axis=1)
                t = _transform(block, how).astype(np.float64)
                s1 += t.sum(axis=0)
                s2 += (t * t).sum(axis=0)
            self.log_depth[m] = np.log(np.maximum(total, 1.0)).astype(np.float32)
            if m == self.library_mod and self.library_size is None:
                if (total <= 0).any():
                    i = int(np.argmax(total <= 0))
                    raise DataError(
                        self.path,
                        f"modality {m!r}: cell {f.cell_names[i]!r} has no counts "
                        "(library size 0); filter empty cells first, or give data.library_size_key",
                    )
                self.library_size = total
            k = self.n_top_features.get(m)
            if k is not None and k < n_vars:
                var = s2 / f.n_cells - (s1 / f.n_cells) ** 2
                # stable order: highest variance first, ties by column; then kept in file order
                top = np.lexsort((np.arange(n_vars), -var))[:k]
                self.columns[m] = np.sort(top)
            else:
                self.columns[m] = None
            self._group_features(f, m)
        loglib = np.log(self.library_size)
        self.library = ((loglib - loglib.mean()) / max(loglib.std(), 1e-8)).astype(np.float32)
        # each modality's depth on the same scale, for models conditioned on another modality's depth
        self.depth = {
            m: ((d - d.mean()) / max(float(d.std()), 1e-8)).astype(np.float32)
            for m, d in self.log_depth.items()
        }

    def _group_features(self, f: SingleCellFile, m: str) -> None:
        """Order the kept features of `m` by a var column (e.g. chromosome) so each group is one block."""
        key = self.feature_group_key.get(m)
        if not hasattr(self, "feature_groups"):
            self.feature_groups: dict[str, list[int]] = {}
        if key is None:
            return
        col = f.var_column(m, key)
        kept = self.columns[m] if self.columns[m] is not None else np.arange(len(col))
        values = col.to_numpy()[kept].astype(str)
        cats, codes = np.unique(values, return_inverse=True)  # groups in sorted name order
        order = np.argsort(codes, kind="stable")
        self.columns[m] = kept[order]
        self.feature_groups[m] = [int(c) for c in np.bincount(codes, minlength=len(cats))]

    def _pca(self, f: SingleCellFile) -> None:
        from sklearn.decomposition import PCA, IncrementalPCA

        self.pca: dict[str, np.ndarray] = {}
        for m, k in self.pca_components.items():
            n_feat = self.n_features(m)
            k = min(k, n_feat, f.n_cells)
            if f.n_cells * n_feat <= 50_000_000:
                data = np.concatenate([self._transformed(m, cells) for cells, _ in self._chunk_cells()])
                self.pca[m] = PCA(k, random_state=self.seed).fit_transform(data).astype(np.float32)
            else:  # larger than we want in memory: two streaming passes
                ipca = IncrementalPCA(k)
                for cells, _ in self._chunk_cells(max(k, 2048)):
                    ipca.partial_fit(self._transformed(m, cells))
                self.pca[m] = np.concatenate(
                    [ipca.transform(self._transformed(m, c)) for c, _ in self._chunk_cells()]
                ).astype(np.float32)

    def _chunk_cells(self, rows: int = 2048):
        n = len(self.cell_names)
        for start in range(0, n, rows):
            yield np.arange(start, min(start + rows, n)), None

    def _make_split(self) -> None:
        n = len(self.cell_names)
        rng = np.random.default_rng(self.seed)
        if self.split == "cells":
            perm = rng.permutation(n)
            n_test, n_val = round(self.test_fraction * n), round(self.val_fraction * n)
            self.test_idx = np.sort(perm[:n_test])
            self.val_idx = np.sort(perm[n_test : n_test + n_val])
            self.train_idx = np.sort(perm[n_test + n_val :])
        else:
            names = np.array(self.group_names)

            def chosen(given: list[str] | None, frac: float, taken: set[int]) -> set[int]:
                if given is not None:
                    missing = [g for g in given if g not in names]
                    if missing:
                        raise DataError(self.path, f"obs key {self.split_key!r}: no group {missing[0]!r}")
                    return {int(np.flatnonzero(names == g)[0]) for g in given}
                out: set[int] = set()
                for g in rng.permutation(len(names)):
                    if np.isin(self.groups, list(out)).sum() >= frac * n or frac == 0:
                        break
                    if int(g) not in taken:
                        out.add(int(g))
                return out

            test = chosen(self.test_groups, self.test_fraction, set())
            val = chosen(self.val_groups, self.val_fraction, test)
            if test & val:
                raise DataError(self.path, "val_groups and test_groups overlap")
            in_test, in_val = np.isin(self.groups, list(test)), np.isin(self.groups, list(val))
            self.test_idx, self.val_idx = np.flatnonzero(in_test), np.flatnonzero(in_val)
            self.train_idx = np.flatnonzero(~in_test & ~in_val)
        if len(self.train_idx) == 0:
            raise DataError(self.path, "the split leaves no training cells")
        # every fit validates and tests: an empty split is the setting's fault, never filled with other cells
        self._check_not_empty(self.val_idx, "val", "validation")
        self._check_not_empty(self.test_idx, "test", "test")
        self.paired = np.ones(n, dtype=bool)
        if self.unpair_fraction > 0:
            k = round(self.unpair_fraction * len(self.train_idx))
            self.paired[rng.choice(self.train_idx, size=k, replace=False)] = False

    def _check_not_empty(self, cells: np.ndarray, stage: str, what: str) -> None:
        """A one-line error naming the setting that leaves the `stage` split without cells."""
        if len(cells):
            return
        n = len(self.cell_names)
        groups = getattr(self, f"{stage}_groups")
        fraction = getattr(self, f"{stage}_fraction")
        if self.split == "groups" and groups is not None:
            key, why = f"{stage}_groups", f"is {groups!r}, which holds no cells"
        elif self.split == "groups":
            key, why = f"{stage}_fraction", f"is {fraction:g}, so no {self.split_key!r} group is held out"
        else:
            key, why = f"{stage}_fraction", f"is {fraction:g}: {fraction * n:.3g} of {n} cells rounds to 0"
        raise DataError(f"data.{key}", f"{why}; the {what} split of {self.path.name} would be empty")

    # ---- batches ---------------------------------------------------------------------------------------
    def n_features(self, mod: str) -> int:
        assert self.file is not None
        cols = self.columns[mod]
        return len(self.file.var_names[mod]) if cols is None else len(cols)

    def feature_names(self, mod: str) -> list[str]:
        """Names of the features of `mod` as the models see them (after feature selection)."""
        assert self.file is not None
        names = self.file.var_names[mod]
        cols = self.columns[mod]
        return [str(v) for v in (names if cols is None else names[cols])]

    def _transformed(self, mod: str, cells: np.ndarray) -> np.ndarray:
        """Transform on all features (so log1p/clr use the cell's full counts), then select features."""
        assert self.file is not None
        x = _transform(self.file.read(mod, cells), self.transforms.get(mod, "none"))
        cols = self.columns[mod]
        return x if cols is None else x[:, cols]

    def make_batch(self, cells: np.ndarray) -> SingleCellBatch:
        """The batch of the given cell positions (any order; read sorted, returned in the order given)."""
        paired = self.paired[cells]
        x = {}
        for i, m in enumerate(self.modalities):
            xm = self._transformed(m, cells)
            if i > 0 and not paired.all():
                xm[~paired] = 0.0  # the modality is treated as missing for unpaired cells
            x[m] = torch.from_numpy(np.ascontiguousarray(xm))
        return SingleCellBatch(
            x=x,
            library=torch.from_numpy(self.library[cells]),
            log_depth={m: torch.from_numpy(d[cells]) for m, d in self.log_depth.items()},
            batch=torch.from_numpy(self.batches[cells]),
            label=torch.from_numpy(self.labels[cells]),
            paired=torch.from_numpy(paired),
            index=torch.from_numpy(np.asarray(cells, dtype=np.int64)),
            pca={m: torch.from_numpy(p[cells]) for m, p in self.pca.items()},
            depth={m: torch.from_numpy(d[cells]) for m, d in self.depth.items()},
        )

    def _loader(self, cells: np.ndarray, shuffle: bool) -> DataLoader:
        ds = _CellBatches(self, cells)
        base = RandomSampler(range(len(cells))) if shuffle else SequentialSampler(range(len(cells)))
        # drop a last batch of one cell in training (batch norm cannot use it)
        drop_last = shuffle and len(cells) % self.batch_size == 1
        sampler = BatchSampler(base, batch_size=self.batch_size, drop_last=drop_last)
        return DataLoader(
            ds,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_idx, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_idx, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_idx, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """All cells in file order (the order of `sample_ids()`)."""
        return self._loader(np.arange(len(self.cell_names)), shuffle=False)

    def sample_ids(self) -> list[str]:
        return [str(c) for c in self.cell_names]

    def all_cells(self) -> np.ndarray:
        return np.arange(len(self.cell_names))

    def model_kwargs(self) -> dict[str, Any]:
        """Data-derived constructor arguments shared by the single-cell models (sailerx, unitednet)."""
        return {
            "modality_dims": {m: self.n_features(m) for m in self.modalities},
            "n_batches": len(self.batch_names),
            "n_classes": len(self.label_names),
            "pca_dims": {m: int(p.shape[1]) for m, p in self.pca.items()},
            "feature_groups": dict(self.feature_groups),
        }

    def write_embedding(self, embedding: np.ndarray | torch.Tensor, out_path: str | Path, model: str) -> Path:
        """Write `embedding` (rows in `sample_ids()` order) to obsm["X_<model>"] of a COPY of the input
        file."""
        if isinstance(embedding, torch.Tensor):
            embedding = embedding.detach().cpu().numpy()
        return write_embedding_copy(self.path, out_path, embedding, f"X_{model}", cell_names=self.cell_names)

    def teardown(self, stage: str | None = None) -> None:
        pass  # keep the file open: setup() is idempotent and the platform calls it again
