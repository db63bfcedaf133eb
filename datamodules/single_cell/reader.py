"""Row readers for AnnData (`.h5ad`) and MuData (`.h5mu`) files, in memory or backed, validated up front.

The files are read through `h5py` and `anndata.io` element readers rather than `anndata.read_h5ad`, so
one code path serves both formats, every layer and every `obsm` matrix, in memory or backed:

- in memory: each selected matrix is loaded once as it is stored (scipy CSR/CSC stays sparse, dense
  stays dense); a batch densifies only its own rows.
- backed: nothing but the obs tables is loaded; a batch reads its rows from the HDF5 file in one call,
  with the row indices sorted and de-duplicated (one read per batch, not one per cell), then restores
  the order.

A modality of an `.h5mu` file is `mod/<name>`; of an `.h5ad` file, `X` is the main matrix and any other
name is an `obsm` key (e.g. the protein counts of an scvi-style CITE-seq `.h5ad`). Every problem found is
a one-line `DataError` naming the file and the key.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem, sparse_dataset, write_elem
from plexlab.datamodules.errors import DataError

log = logging.getLogger(__name__)

CHUNK_ROWS = 2048


def _encoding(node: h5py.Group | h5py.Dataset) -> str:
    enc = node.attrs.get("encoding-type", "array" if isinstance(node, h5py.Dataset) else "")
    return enc.decode() if isinstance(enc, bytes) else str(enc)


class MatrixSource:
    """One cells x features matrix in the file (X, a layer or an obsm entry); reads rows as dense float32.

    `rows` are positions in the file's own cell order; `order` (optional) maps the data module's cell order
    onto
    them, so modalities stored in different cell orders are aligned without copying.
    """

    def __init__(self, path: Path, key: str, backed: bool) -> None:
        self.path = path
        self.key = key
        self.backed = backed
        self._file: h5py.File | None = None
        self._mem: np.ndarray | sp.spmatrix | None = None
        node = self.file[key]
        self.encoding = _encoding(node)
        if self.encoding in ("csr_matrix", "csc_matrix"):
            self.shape = tuple(int(s) for s in node.attrs["shape"])
        elif isinstance(node, h5py.Dataset) and node.ndim == 2:
            self.shape = tuple(int(s) for s in node.shape)
        else:
            raise DataError(path, f"{key}: expected a 2-D matrix (dense or CSR/CSC), found {self.encoding!r}")
        if self.encoding == "csc_matrix" and backed:
            log.warning("%s: %s is CSC; backed row reads from CSC are slow (store it as CSR)", path, key)
        if not backed:
            mat = read_elem(node)
            self._mem = mat.tocsr() if sp.issparse(mat) else np.asarray(mat)

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file

    def __getstate__(self) -> dict:
        # h5py handles cannot cross process boundaries (DataLoader workers): reopen lazily there.
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """Dense float32 rows (in the order given), optionally only some columns."""
        rows = np.asarray(rows, dtype=np.int64)
        uniq, inverse = np.unique(rows, return_inverse=True)  # sorted, one read per batch
        if self._mem is not None:
            block = self._mem[uniq]
        else:
            node = self.file[self.key]
            block = (
                sparse_dataset(node)[uniq] if self.encoding in ("csr_matrix", "csc_matrix") else node[uniq]
            )
        if cols is not None:
            block = block[:, cols]
        dense = block.toarray() if sp.issparse(block) else np.asarray(block)
        return dense.astype(np.float32, copy=False)[inverse]

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, dense block) over the whole matrix in file order: the streaming pass used for
        statistics."""
        for start in range(0, self.shape[0], chunk_rows):
            yield start, self.read(np.arange(start, min(start + chunk_rows, self.shape[0])))

    def check_values(self, require_counts: bool, cell_names: np.ndarray) -> None:
        """Raise DataError on NaN/inf, or on negative or non-integer values where counts are required."""
        node = self.file[self.key]
        if self.encoding in ("csr_matrix", "csc_matrix"):
            data = node["data"]
            for start in range(0, data.shape[0], 1 << 22):
                values = data[start : start + (1 << 22)]
                bad = self._bad_values(values, require_counts)
                if bad is not None:
                    pos, problem = bad
                    row = self._row_of(start + pos)
                    raise DataError(self.path, f"{self.key}: {problem} at {self._cell(row, cell_names)}")
        else:
            for start, block in self.chunks():
                bad = self._bad_values(block.ravel(), require_counts)
                if bad is not None:
                    pos, problem = bad
                    row = start + pos // self.shape[1]
                    raise DataError(self.path, f"{self.key}: {problem} at {self._cell(row, cell_names)}")

    @staticmethod
    def _bad_values(values: np.ndarray, require_counts: bool) -> tuple[int, str] | None:
        values = np.asarray(values)
        finite = np.isfinite(values)
        if not finite.all():
            pos = int(np.argmin(finite))
            return pos, f"{'NaN' if np.isnan(values[pos]) else 'infinite'} value"
        if require_counts:
            neg = values < 0
            if neg.any():
                pos = int(np.argmax(neg))
                return pos, f"negative count {values[pos]:g} (counts are required)"
            frac = values != np.round(values)
            if frac.any():
                pos = int(np.argmax(frac))
                return pos, f"non-integer count {values[pos]:g} (counts are required; choose a counts layer)"
        return None

    def _row_of(self, data_pos: int) -> int:
        node = self.file[self.key]
        indptr = node["indptr"][:]
        outer = int(np.searchsorted(indptr, data_pos, side="right") - 1)
        if self.encoding == "csr_matrix":
            return outer
        return int(node["indices"][data_pos])  # CSC: the stored index is the row

    @staticmethod
    def _cell(row: int, cell_names: np.ndarray) -> str:
        name = str(cell_names[row]) if row < len(cell_names) else "?"  # str: numpy 2 reprs np.str_('x')
        return f"cell {name!r} (row {row})"


class SingleCellFile:
    """An open `.h5ad`/`.h5mu` file: modality matrices, cell and feature names, and obs columns, validated."""

    def __init__(self, path: str | Path, modalities: list[str], layers: dict[str, str], backed: bool) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "file not found")
        suffix = self.path.suffix.lower()
        if suffix not in (".h5ad", ".h5mu"):
            raise DataError(self.path, f"unsupported file type {suffix!r} (expected .h5ad or .h5mu)")
        self.is_mudata = suffix == ".h5mu"
        try:
            self.h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(self.path, f"not a readable HDF5 file ({exc})") from exc
        self.modalities = list(modalities)
        unknown = [m for m in layers if m not in self.modalities]
        if unknown:
            raise DataError(
                self.path, f"layers: {unknown[0]!r} is not one of the chosen modalities {modalities}"
            )
        self.obs_names = self._index("obs")
        self.sources: dict[str, MatrixSource] = {}
        self.var_names: dict[str, np.ndarray] = {}
        self.order: dict[str, np.ndarray | None] = {}
        for mod in self.modalities:
            key = self._matrix_key(mod, layers.get(mod))
            src = MatrixSource(self.path, key, backed)
            self.sources[mod] = src
            self.var_names[mod] = self._var_names(mod, src.shape[1])
        self._align_cells()

    # ---- structure -------------------------------------------------------------------------------------
    def _index(self, group: str) -> np.ndarray:
        if group not in self.h5:
            raise DataError(self.path, f"{group}: missing (not an AnnData/MuData file?)")
        node = self.h5[group]
        index_key = node.attrs.get("_index", "_index")
        index_key = index_key.decode() if isinstance(index_key, bytes) else index_key
        if index_key not in node:
            raise DataError(self.path, f"{group}: no index")
        return np.asarray(read_elem(node[index_key])).astype(str)

    def _matrix_key(self, mod: str, layer: str | None) -> str:
        if self.is_mudata:
            if "mod" not in self.h5 or mod not in self.h5["mod"]:
                have = sorted(self.h5["mod"].keys()) if "mod" in self.h5 else []
                raise DataError(self.path, f"modality {mod!r} not found (modalities: {have})")
            base = f"mod/{mod}"
        else:
            if mod != "X":
                obsm = sorted(self.h5["obsm"].keys()) if "obsm" in self.h5 else []
                if mod not in obsm:
                    raise DataError(
                        self.path, f"modality {mod!r}: not 'X' and not an obsm key (obsm: {obsm})"
                    )
                if layer:
                    raise DataError(self.path, f"layers: obsm modality {mod!r} has no layers")
                return f"obsm/{mod}"
            base = ""
        if layer:
            layer_group = f"{base}/layers".lstrip("/")
            have = sorted(self.h5[layer_group].keys()) if layer_group in self.h5 else []
            if layer not in have:
                where = f"modality {mod!r}" if self.is_mudata else "the AnnData"
                raise DataError(self.path, f"layer {layer!r} not found in {where} (layers: {have})")
            return f"{layer_group}/{layer}"
        key = f"{base}/X".lstrip("/")
        if key not in self.h5:
            raise DataError(self.path, f"{key}: missing matrix")
        return key

    def _var_names(self, mod: str, n_vars: int) -> np.ndarray:
        if self.is_mudata:
            names = self._index(f"mod/{mod}/var")
        elif mod == "X":
            names = self._index("var")
        else:
            node = self.h5[f"obsm/{mod}"]
            if _encoding(node) == "dataframe":
                raise DataError(self.path, f"obsm/{mod}: data frames are not supported; store a matrix")
            names = np.array([f"{mod}_{i}" for i in range(n_vars)])
        if len(names) != n_vars:
            raise DataError(self.path, f"modality {mod!r}: {len(names)} feature names for {n_vars} columns")
        return names

    def _align_cells(self) -> None:
        """Every modality must hold the same cells; a different order is aligned, a different set is an
        error."""
        ref_names: np.ndarray | None = None
        ref_mod = ""
        for mod in self.modalities:
            names = self._index(f"mod/{mod}/obs") if self.is_mudata else self.obs_names
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
        """An obs column aligned to the cell order; `key` may be global or `<modality>:<column>` (MuData)."""
        groups: list[tuple[str, str, np.ndarray | None]] = [("obs", key, None)]
        if self.is_mudata and ":" in key:
            mod, col = key.split(":", 1)
            if f"mod/{mod}/obs" in self.h5:
                groups.insert(0, (f"mod/{mod}/obs", col, self._mod_order(mod)))
        elif self.is_mudata:
            for mod in self.modalities:
                groups.append((f"mod/{mod}/obs", key, self._mod_order(mod)))
        for group, col, order in groups:
            if group in self.h5 and col in self.h5[group]:
                values = read_elem(self.h5[group][col])
                series = pd.Series(np.asarray(values) if not isinstance(values, pd.Categorical) else values)
                if group == "obs" and not np.array_equal(self.obs_names, self.cell_names):
                    # the global obs of a MuData is indexed by its own (union) cell names
                    series.index = self.obs_names
                    series = series.reindex(self.cell_names)
                elif order is not None:
                    series = series.iloc[order]
                return series.reset_index(drop=True)
        cols = sorted(self.h5["obs"].keys()) if "obs" in self.h5 else []
        cols = [c for c in cols if c != "_index"]
        raise DataError(self.path, f"obs key {key!r} not found (obs columns: {cols[:20]})")

    def var_column(self, mod: str, key: str) -> pd.Series:
        """A var (feature) column of a modality, in the matrix's column order."""
        group = f"mod/{mod}/var" if self.is_mudata else ("var" if mod == "X" else "")
        if not group or group not in self.h5 or key not in self.h5[group]:
            have = []
            if group and group in self.h5:
                have = sorted(k for k in self.h5[group].keys() if k != "_index")
            raise DataError(
                self.path,
                f"var key {key!r} not found for modality {mod!r} (var columns: {have[:20]})",
            )
        values = read_elem(self.h5[group][key])
        return pd.Series(values if isinstance(values, pd.Categorical) else np.asarray(values))

    def _mod_order(self, mod: str) -> np.ndarray | None:
        names = self._index(f"mod/{mod}/obs")
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
        """(cell positions, dense block) over all cells of a modality."""
        for start in range(0, self.n_cells, chunk_rows):
            cells = np.arange(start, min(start + chunk_rows, self.n_cells))
            yield cells, self.read(mod, cells)

    def check_values(self, mod: str, require_counts: bool) -> None:
        names = self.cell_names if self.order[mod] is None else self._file_cell_names(mod)
        self.sources[mod].check_values(require_counts, names)

    def _file_cell_names(self, mod: str) -> np.ndarray:
        return self._index(f"mod/{mod}/obs") if self.is_mudata else self.obs_names

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
    order.
    """
    source, out_path = Path(source), Path(out_path)
    if source.resolve() == out_path.resolve():
        raise DataError(out_path, "refusing to overwrite the input file; choose another output path")
    embedding = np.asarray(embedding, dtype=np.float32)
    with h5py.File(source, "r") as f:
        idx_key = f["obs"].attrs.get("_index", "_index")
        idx_key = idx_key.decode() if isinstance(idx_key, bytes) else idx_key
        obs_names = np.asarray(read_elem(f["obs"][idx_key])).astype(str)
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
