"""Row readers for AnnData (`.h5ad`) and MuData (`.h5mu`) files, in memory or backed, validated up front.

Every on-disk layout `anndata.read_h5ad` reads is accepted: current, 0.7-era and pre-0.7 (see `h5_file`).
Tables (obs, var) go through anndata's own element reader (`anndata.io.read_elem`), which decodes all of
them; categorical columns come back as names, never codes. Matrices are opened per element (`matrix`)
rather than with `anndata.read_h5ad(backed="r")` or `mudata.read_h5mu(backed=True)`, which load every
layer and `obsm` matrix into memory; so one code path serves both formats, every layer and every `obsm`
matrix, in memory or backed:

- in memory: each selected matrix is loaded once as it is stored (scipy CSR/CSC stays sparse, dense
  stays dense); a batch densifies only its own rows.
- backed: nothing but the obs/var tables is loaded; a batch reads its rows from the HDF5 file in one call
  (anndata's `sparse_dataset` for sparse matrices), with the row indices sorted and de-duplicated (one
  read per batch, not one per cell), then restores the order.

A modality of an `.h5mu` file is `mod/<name>`; of an `.h5ad` file, `X` is the main matrix and any other
name is an `obsm` key (e.g. the protein counts of an scvi-style CITE-seq `.h5ad`). Every problem found is
a one-line `DataError` naming the file and the key, and, where a setting would fix it, the setting.
Passes over the whole file (validation, statistics) show a progress bar on a terminal, nothing otherwise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from anndata.io import read_elem, write_elem
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.single_cell.h5_file import (
    Tables,
    as_names,
    check_kind,
    default_modalities,
    legacy_quiet,
    open_hdf5,
)
from plexlab.datamodules.single_cell.matrix import CHUNK_ROWS, MatrixSource, progress

__all__ = ["MatrixSource", "SingleCellFile", "default_modalities", "write_embedding_copy"]


class SingleCellFile:
    """An open `.h5ad`/`.h5mu` file: modality matrices, cell and feature names, and obs columns, validated."""

    def __init__(self, path: str | Path, modalities: list[str], layers: dict[str, str], backed: bool) -> None:
        self.path = Path(path)
        self.h5 = open_hdf5(self.path)
        self.is_mudata = check_kind(self.path, self.h5)
        self.tables = Tables(self.path, self.h5)
        self.modalities = list(modalities)
        self.layers = dict(layers)
        unknown = [m for m in layers if m not in self.modalities]
        if unknown:
            raise DataError(
                self.path, f"layers: {unknown[0]!r} is not one of the chosen modalities {modalities}"
            )
        self.obs_names = self.tables.names("obs")
        self.sources: dict[str, MatrixSource] = {}
        self.var_names: dict[str, np.ndarray] = {}
        self.order: dict[str, np.ndarray | None] = {}
        for mod in self.modalities:
            key, field = self._matrix_key(mod, layers.get(mod))
            src = MatrixSource(self.path, key, backed, field)
            self.sources[mod] = src
            self.var_names[mod] = self._var_names(mod, src.shape[1])
        self._align_cells()

    # ---- structure -------------------------------------------------------------------------------------
    def _matrix_key(self, mod: str, layer: str | None) -> tuple[str, str | None]:
        if self.is_mudata:
            have = list(self.h5["mod"].keys())
            if mod not in have:
                raise DataError(
                    self.path, f"modality {mod!r} not found (modalities: {have}); set data.modalities"
                )
            base = f"mod/{mod}"
        else:
            if mod != "X":
                obsm = self.h5.get("obsm")
                if isinstance(obsm, h5py.Dataset):  # pre-0.7: one structured array, a field per key
                    keys = list(obsm.dtype.names or [])
                    field: str | None = mod
                else:
                    keys, field = (sorted(obsm.keys()) if obsm is not None else []), None
                if mod not in keys:
                    raise DataError(
                        self.path,
                        f"modality {mod!r}: not 'X' and not an obsm key (obsm: {keys}); set data.modalities",
                    )
                if layer:
                    raise DataError(self.path, f"layers: obsm modality {mod!r} has no layers")
                return ("obsm", field) if field else (f"obsm/{mod}", None)
            base = ""
        if layer:
            layer_group = f"{base}/layers".lstrip("/")
            have = sorted(self.h5[layer_group].keys()) if layer_group in self.h5 else []
            if layer not in have:
                where = f"modality {mod!r}" if self.is_mudata else "the AnnData"
                raise DataError(
                    self.path,
                    f"layer {layer!r} not found in {where} (layers: {have}); set data.layers "
                    f"to one of them, or leave {mod!r} out of it to read X",
                )
            return f"{layer_group}/{layer}", None
        key = f"{base}/X".lstrip("/")
        if key not in self.h5:
            layer_group = f"{base}/layers".lstrip("/")
            have = sorted(self.h5[layer_group].keys()) if layer_group in self.h5 else []
            raise DataError(
                self.path, f"{key}: missing matrix; choose a layer with data.layers (layers: {have})"
            )
        return key, None

    def _var_names(self, mod: str, n_vars: int) -> np.ndarray:
        if self.is_mudata:
            names = self.tables.names(f"mod/{mod}/var")
        elif mod == "X":
            names = self.tables.names("var")
        else:
            node = self.h5["obsm"] if isinstance(self.h5["obsm"], h5py.Dataset) else self.h5[f"obsm/{mod}"]
            if str(node.attrs.get("encoding-type", "")) == "dataframe":
                raise DataError(self.path, f"obsm/{mod}: data frames are not supported; store a matrix")
            names = np.array([f"{mod}_{i}" for i in range(n_vars)], dtype=object)
        if len(names) != n_vars:
            raise DataError(self.path, f"modality {mod!r}: {len(names)} feature names for {n_vars} columns")
        return names

    def _align_cells(self) -> None:
        """Every modality must hold the same cells; a different order is aligned, a different set is an
        error."""
        ref_names: np.ndarray | None = None
        ref_mod = ""
        for mod in self.modalities:
            names = self.tables.names(f"mod/{mod}/obs") if self.is_mudata else self.obs_names
            n_rows = self.sources[mod].shape[0]
            if len(names) != n_rows:
                raise DataError(
                    self.path, f"modality {mod!r}: matrix has {n_rows} rows for {len(names)} cells"
                )
            if ref_names is None:
                ref_names, ref_mod = names, mod
                self.order[mod] = None
                continue
            if len(names) == len(ref_names) and np.array_equal(names, ref_names):
                self.order[mod] = None
                continue
            pos = pd.Index(names)
            if pos.has_duplicates:
                raise DataError(self.path, f"modality {mod!r}: duplicate cell names")
            idx = pos.get_indexer(ref_names)
            missing = ref_names[idx < 0]
            extra = np.setdiff1d(names, ref_names)
            if len(missing) or len(extra):
                example = str(missing[0] if len(missing) else extra[0])
                raise DataError(
                    self.path,
                    f"modalities {ref_mod!r} ({len(ref_names)} cells) and {mod!r} ({len(names)} cells) hold "
                    f"different cells (e.g. {example!r}); subset them to the shared cells first",
                )
            self.order[mod] = idx
        assert ref_names is not None
        self.cell_names = ref_names

    @property
    def n_cells(self) -> int:
        return len(self.cell_names)

    # ---- obs columns -----------------------------------------------------------------------------------
    def obs_column(self, key: str) -> pd.Series:
        """An obs column aligned to the cell order; `key` may be global or `<modality>:<column>` (MuData).

        Categorical columns come back as their names, in every layout."""
        groups: list[tuple[str, str, np.ndarray | None]] = [("obs", key, None)]
        if self.is_mudata and ":" in key:
            mod, col = key.split(":", 1)
            if f"mod/{mod}/obs" in self.h5:
                groups.insert(0, (f"mod/{mod}/obs", col, self._mod_order(mod)))
        elif self.is_mudata:
            for mod in self.modalities:
                groups.append((f"mod/{mod}/obs", key, self._mod_order(mod)))
        for group, col, order in groups:
            if group in self.h5 and col in self.tables.columns(group):
                series = self.tables.column(group, col)
                if group == "obs" and not np.array_equal(self.obs_names, self.cell_names):
                    # the global obs of a MuData is indexed by its own (union) cell names
                    series.index = self.obs_names
                    series = series.reindex(self.cell_names)
                elif order is not None:
                    series = series.iloc[order]
                return series.reset_index(drop=True)
        raise DataError(
            self.path, f"obs key {key!r} not found (obs columns: {self.tables.columns('obs')[:20]})"
        )

    def library_sizes(self, key: str) -> np.ndarray:
        """Positive per-cell library sizes from obs column `key` (the `library_size_key` setting)."""
        lib = pd.to_numeric(self.obs_column(key), errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(lib) | (lib <= 0)
        if bad.any():
            i = int(np.argmax(bad))
            value = "missing or not a number" if np.isnan(lib[i]) else f"{lib[i]:g}"
            raise DataError(
                self.path,
                f"obs key {key!r}: library size {value} at cell {self.cell_names[i]!r}; library_size_key "
                "must name positive total counts per cell (leave it out to sum the counts)",
            )
        return lib

    def var_column(self, mod: str, key: str) -> pd.Series:
        """A var (feature) column of a modality, in the matrix's column order."""
        group = f"mod/{mod}/var" if self.is_mudata else ("var" if mod == "X" else "")
        have = self.tables.columns(group) if group else []
        if key not in have:
            raise DataError(
                self.path,
                f"var key {key!r} not found for modality {mod!r} (var columns: {have[:20]})",
            )
        return self.tables.column(group, key)

    def _mod_order(self, mod: str) -> np.ndarray | None:
        names = self.tables.names(f"mod/{mod}/obs")
        if np.array_equal(names, self.cell_names):
            return None
        return pd.Index(names).get_indexer(self.cell_names)

    # ---- rows ------------------------------------------------------------------------------------------
    def read(self, mod: str, cells: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """Dense rows of modality `mod` for the given cell positions (data-module order)."""
        order = self.order[mod]
        rows = cells if order is None else order[cells]
        return self.sources[mod].read(rows, cols)

    def chunks(self, mod: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(cell positions, dense block) over all cells of a modality, with a progress bar on a terminal."""
        with progress(self.n_cells, f"reading {self.sources[mod].key}", "cells") as bar:
            for start in range(0, self.n_cells, chunk_rows):
                cells = np.arange(start, min(start + chunk_rows, self.n_cells))
                yield cells, self.read(mod, cells)
                bar.update(len(cells))

    def check_values(self, mod: str, require_counts: bool) -> None:
        """NaN/inf anywhere, and negative or non-integer values where counts are required, as a DataError
        naming the cell and the settings that would fix it."""
        names = self.cell_names if self.order[mod] is None else self._file_cell_names(mod)
        nan_fix, counts_fix = self._fixes(mod)
        self.sources[mod].check_values(require_counts, names, nan_fix, counts_fix)

    def _fixes(self, mod: str) -> tuple[str, str]:
        """What to set when a modality holds NaN, or is not the raw counts a setting asked for."""
        if not self.is_mudata and mod != "X":
            layer = "store the matrix without them"
            counts = f"obsm {mod!r} has no layers"
        else:
            group = f"mod/{mod}/layers" if self.is_mudata else "layers"
            have = sorted(self.h5[group].keys()) if group in self.h5 else []
            others = [x for x in have if x != self.layers.get(mod)]
            layer = f"choose another layer with data.layers (layers in the file: {others})"
            counts = f"choose a layer of raw counts with data.layers (layers in the file: {others})"
        counts += (
            f", or leave {mod!r} out of data.counts_required (with data.library_size_key for the "
            "library size from obs)"
        )
        return layer, counts

    def _file_cell_names(self, mod: str) -> np.ndarray:
        return self.tables.names(f"mod/{mod}/obs") if self.is_mudata else self.obs_names

    def close(self) -> None:
        for src in self.sources.values():
            src.close()
        self.h5.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["h5"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.h5 = h5py.File(self.path, "r")
        self.tables.h5 = self.h5


def write_embedding_copy(
    source: str | Path,
    out_path: str | Path,
    embedding: np.ndarray,
    key: str,
    cell_names: np.ndarray | list[str] | None = None,
) -> Path:
    """Copy `source` to `out_path` and store `embedding` as `obsm[key]` in the copy; the input is never
    modified.

    The copy is written to a temporary file beside `out_path` and renamed into place, so an interrupted write
    never leaves a half-written file. For MuData the embedding goes to the global `obsm`; its rows must match
    the file's global cells; give `cell_names` (the embedding's row names) to reorder them to the file's
    order. A pre-0.7 file (whose `obsm` is one structured array) is rewritten by anndata in the current
    layout.
    """
    source, out_path = Path(source), Path(out_path)
    if source.resolve() == out_path.resolve():
        raise DataError(out_path, "refusing to overwrite the input file; choose another output path")
    embedding = np.asarray(embedding, dtype=np.float32)
    with open_hdf5(source) as f:
        pre07 = isinstance(f["obs"], h5py.Dataset)
        with legacy_quiet():
            obs = read_elem(f["obs"])
        index = obs.index if isinstance(obs, pd.DataFrame) else obs[obs.dtype.names[0]]
        obs_names = as_names(index).astype(str)
    n_obs = len(obs_names)
    if cell_names is not None and embedding.ndim == 2 and len(cell_names) == embedding.shape[0]:
        pos = pd.Index(np.asarray(cell_names).astype(str)).get_indexer(obs_names)
        if (pos < 0).any():
            raise DataError(out_path, f"obsm/{key}: no embedding for cell {str(obs_names[pos < 0][0])!r}")
        embedding = embedding[pos]
    if embedding.ndim != 2 or embedding.shape[0] != n_obs:
        raise DataError(
            out_path, f"obsm/{key}: embedding has shape {embedding.shape}, the file {n_obs} cells"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        if pre07:
            import anndata as ad

            with legacy_quiet():
                adata = ad.read_h5ad(source)
            adata.obsm[key] = embedding
            adata.write_h5ad(tmp)
        else:
            shutil.copyfile(source, tmp)
            with h5py.File(tmp, "a") as f:
                obsm = f.require_group("obsm")
                if key in obsm:
                    del obsm[key]
                write_elem(obsm, key, embedding)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_path
