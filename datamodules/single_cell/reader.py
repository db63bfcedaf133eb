"""Row readers for AnnData (`.h5ad`) and MuData (`.h5mu`) files, in memory or backed, validated up front.

Every on-disk layout `anndata.read_h5ad` reads is accepted:

- current (anndata >= 0.8): `encoding-type` attributes everywhere, categoricals as `categories`/`codes`.
- 0.7-era: data frames at `encoding-version` 0.1.0, a categorical column stored as integer codes that
  refer to `<obs|var>/__categories/<column>`.
- pre-0.7: `obs`/`var` as one structured array (the first field is the index), categorical names in
  `uns/<column>_categories`, sparse matrices tagged `h5sparse_format`, `obsm` as one structured array.

Tables (obs, var) go through anndata's own element reader (`anndata.io.read_elem`), which decodes the 0.7
and current encodings and the structured arrays; categorical columns come back as names, never codes.
Matrices are opened per element rather than with `anndata.read_h5ad(backed="r")`, which would load every
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

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import OldFormatWarning
from anndata.io import read_elem, sparse_dataset, write_elem
from plexlab.datamodules.errors import DataError
from tqdm import tqdm

log = logging.getLogger(__name__)

CHUNK_ROWS = 2048
PROGRESS_DELAY_S = 2.0  # a pass shorter than this never shows a bar
SUFFIXES = {".h5ad": "AnnData", ".h5mu": "MuData"}


@contextmanager
def _legacy_quiet() -> Iterator[None]:
    """Old layouts are read on purpose: anndata's OldFormatWarning per element would only add noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OldFormatWarning)
        yield


def progress(total: int, what: str, unit: str) -> tqdm:
    """A progress bar on a terminal (stderr a TTY) for passes longer than PROGRESS_DELAY_S; silent
    otherwise."""
    return tqdm(
        total=total,
        desc=what,
        unit=unit,
        unit_scale=True,
        leave=False,
        disable=None,
        delay=PROGRESS_DELAY_S,
        dynamic_ncols=True,
    )


def _as_names(values: object) -> np.ndarray:
    """Names as an object array of Python str: messages show 'cell3', never np.str_('cell3')."""
    return np.array([str(v) for v in np.asarray(values)], dtype=object)


def open_hdf5(path: Path) -> h5py.File:
    """Open an `.h5ad`/`.h5mu` for reading; DataError when it is missing, not HDF5 or truncated."""
    if not path.is_file():
        raise DataError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(path, f"unsupported file type {suffix!r} (expected .h5ad or .h5mu)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        text = str(exc)
        if "truncated" in text:
            why = "truncated HDF5 file (an interrupted download or copy?)"
        elif "signature" in text:
            why = f"not an HDF5 file; an {SUFFIXES[suffix]} {suffix} file is HDF5"
        else:
            why = f"not a readable HDF5 file ({text})"
        raise DataError(path, why) from exc


def _check_kind(path: Path, h5: h5py.File) -> bool:
    """True for a MuData file; DataError when the contents and the file name disagree."""
    enc = _attr(h5, "encoding-type").lower()
    has_mod = isinstance(h5.get("mod"), h5py.Group)
    is_mudata = has_mod or enc == "mudata"
    named_mudata = path.suffix.lower() == ".h5mu"
    if is_mudata and not named_mudata:
        mods = sorted(h5["mod"].keys()) if has_mod else []
        raise DataError(path, f"a MuData file (modalities {mods}) named .h5ad; rename it to .h5mu")
    if named_mudata and not is_mudata:
        kind = "an AnnData file" if "X" in h5 or "obs" in h5 else "not a MuData file"
        raise DataError(path, f"{kind} (no 'mod' group of modalities) named .h5mu; rename it to .h5ad")
    if "obs" not in h5:
        raise DataError(path, "obs: missing (not an AnnData/MuData file?)")
    return is_mudata


def default_modalities(path: str | Path) -> list[str]:
    """The modalities a file offers: MuData's `mod-order` (else its `mod` keys), or `X` for AnnData."""
    path = Path(path)
    with open_hdf5(path) as h5:
        if not _check_kind(path, h5):
            return ["X"]
        have = list(h5["mod"].keys())
        order = h5["mod"].attrs.get("mod-order")
        names = (
            [m.decode() if isinstance(m, bytes) else str(m) for m in order]
            if order is not None
            else sorted(have)
        )
        missing = [m for m in names if m not in have]
        if missing:
            raise DataError(path, f"mod: mod-order lists {missing[0]!r}, which the file lacks (has {have})")
        if not names:
            raise DataError(path, "mod: no modalities")
        return names


def _attr(node: h5py.HLObject, name: str) -> str:
    value = node.attrs.get(name, "")
    return value.decode() if isinstance(value, bytes) else str(value)


def _matrix_layout(node: h5py.Group | h5py.Dataset) -> tuple[str, tuple[int, ...]] | None:
    """('csr' | 'csc' | 'dense', shape) of a stored matrix in any anndata layout; None if not a matrix."""
    attrs = node.attrs
    enc = _attr(node, "encoding-type")
    if isinstance(node, h5py.Group):
        if enc in ("csr_matrix", "csc_matrix"):
            fmt, shape = enc[:3], attrs.get("shape")
        elif "h5sparse_format" in attrs:  # pre-0.7 sparse
            fmt, shape = _attr(node, "h5sparse_format"), attrs.get("h5sparse_shape")
        else:
            return None
        if (
            fmt not in ("csr", "csc")
            or shape is None
            or any(k not in node for k in ("data", "indices", "indptr"))
        ):
            return None
        return fmt, tuple(int(s) for s in shape)
    if node.ndim == 2 and node.dtype.names is None and node.dtype.kind in "biuf":
        return "dense", tuple(int(s) for s in node.shape)
    return None


class MatrixSource:
    """One cells x features matrix in the file (X, a layer or an obsm entry); reads rows as dense float32.

    `key` is the HDF5 path; `field` names the entry of a pre-0.7 `obsm` (one structured array, read into
    memory: such entries are small embeddings).
    """

    def __init__(self, path: Path, key: str, backed: bool, field: str | None = None) -> None:
        self.path = path
        self.key = key if field is None else f"{key}/{field}"
        self._node_key = key
        self.backed = backed
        self._file: h5py.File | None = None
        self._mem: np.ndarray | sp.spmatrix | None = None
        node = self.file[key]
        if field is not None:
            values = np.asarray(node[field], dtype=np.float32)
            if values.ndim != 2:
                raise DataError(path, f"{self.key}: expected a 2-D matrix, found shape {values.shape}")
            self.format, self.shape, self._mem = "dense", values.shape, values
            return
        layout = _matrix_layout(node)
        if layout is None:
            enc = node.attrs.get("encoding-type", type(node).__name__)
            raise DataError(path, f"{key}: expected a 2-D matrix (dense or CSR/CSC), found {str(enc)!r}")
        self.format, self.shape = layout
        if self.format == "csc" and backed:
            log.warning("%s: %s is CSC; backed row reads from CSC are slow (store it as CSR)", path, key)
        if not backed:
            with _legacy_quiet():
                mat = self._guarded(read_elem, node)
            self._mem = mat.tocsr() if sp.issparse(mat) else np.asarray(mat)

    @property
    def sparse(self) -> bool:
        return self.format in ("csr", "csc")

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

    def _guarded(self, read: Callable, *args: object) -> object:
        """HDF5 read errors (a damaged file) as one line naming the key."""
        try:
            return read(*args)
        except OSError as exc:
            raise DataError(self.path, f"{self.key}: cannot read ({str(exc).splitlines()[0]})") from exc

    def read(self, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """Dense float32 rows (in the order given), optionally only some columns."""
        rows = np.asarray(rows, dtype=np.int64)
        uniq, inverse = np.unique(rows, return_inverse=True)  # sorted, one read per batch
        if self._mem is not None:
            block = self._mem[uniq]
        else:
            node = self.file[self._node_key]
            with _legacy_quiet():
                block = self._guarded(lambda: sparse_dataset(node)[uniq] if self.sparse else node[uniq])
        if cols is not None:
            block = block[:, cols]
        dense = block.toarray() if sp.issparse(block) else np.asarray(block)
        return dense.astype(np.float32, copy=False)[inverse]

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, dense block) over the whole matrix in file order: the streaming pass used for
        statistics."""
        for start in range(0, self.shape[0], chunk_rows):
            yield start, self.read(np.arange(start, min(start + chunk_rows, self.shape[0])))

    def check_values(
        self, require_counts: bool, cell_names: np.ndarray, nan_fix: str = "", counts_fix: str = ""
    ) -> None:
        """Raise DataError on NaN/inf, or on negative or non-integer values where counts are required;
        the message ends with `nan_fix` or `counts_fix`, the settings that would help."""
        fix = (nan_fix, counts_fix)
        if self.sparse and self._mem is None:
            data = self.file[self._node_key]["data"]
            step = 1 << 22
            with progress(data.shape[0], f"checking {self.key}", "values") as bar:
                for start in range(0, data.shape[0], step):
                    values = self._guarded(lambda s=start: data[s : s + step])
                    self._raise_on_bad(
                        values, require_counts, cell_names, fix, lambda p, s=start: self._row_of(s + p)
                    )
                    bar.update(len(values))
            return
        if self._mem is not None and sp.issparse(self._mem):
            csr = self._mem
            self._raise_on_bad(
                csr.data,
                require_counts,
                cell_names,
                fix,
                lambda p: int(np.searchsorted(csr.indptr, p, side="right") - 1),
            )
            return
        with progress(self.shape[0], f"checking {self.key}", "cells") as bar:
            for start, block in self.chunks():
                self._raise_on_bad(
                    block.ravel(), require_counts, cell_names, fix, lambda p, s=start: s + p // self.shape[1]
                )
                bar.update(block.shape[0])

    def _raise_on_bad(
        self,
        values: np.ndarray,
        require_counts: bool,
        cell_names: np.ndarray,
        fix: tuple[str, str],
        row_of: Callable[[int], int],
    ) -> None:
        values = np.asarray(values)
        finite = np.isfinite(values)
        problem, pos, hint = "", 0, ""
        if not finite.all():
            pos = int(np.argmin(finite))
            problem = f"{'NaN' if np.isnan(values[pos]) else 'infinite'} value"
            hint = fix[0]
        elif require_counts:
            neg = values < 0
            frac = values != np.round(values)
            if neg.any():
                pos, problem = int(np.argmax(neg)), "negative count"
            elif frac.any():
                pos, problem = int(np.argmax(frac)), "non-integer count"
            if problem:
                problem = f"{problem} {float(values[pos]):g}"
                hint = fix[1]
        if problem:
            where = self._cell(int(row_of(pos)), cell_names)
            raise DataError(self.path, f"{self.key}: {problem} at {where}" + (f"; {hint}" if hint else ""))

    def _row_of(self, data_pos: int) -> int:
        node = self.file[self._node_key]
        indptr = node["indptr"][:]
        outer = int(np.searchsorted(indptr, data_pos, side="right") - 1)
        if self.format == "csr":
            return outer
        return int(node["indices"][data_pos])  # CSC: the stored index is the row

    @staticmethod
    def _cell(row: int, cell_names: np.ndarray) -> str:
        name = str(cell_names[row]) if row < len(cell_names) else "?"
        return f"cell {name!r} (row {row})"


class SingleCellFile:
    """An open `.h5ad`/`.h5mu` file: modality matrices, cell and feature names, and obs columns, validated."""

    def __init__(self, path: str | Path, modalities: list[str], layers: dict[str, str], backed: bool) -> None:
        self.path = Path(path)
        self.h5 = open_hdf5(self.path)
        self.is_mudata = _check_kind(self.path, self.h5)
        self._tables: dict[str, pd.DataFrame] = {}
        self._name_cache: dict[str, np.ndarray] = {}
        self._unnamed: dict[str, str] = {}  # pre-0.7 categorical columns whose names do not fit
        self.modalities = list(modalities)
        self.layers = dict(layers)
        unknown = [m for m in layers if m not in self.modalities]
        if unknown:
            raise DataError(
                self.path, f"layers: {unknown[0]!r} is not one of the chosen modalities {modalities}"
            )
        self.obs_names = self._names("obs")
        self.sources: dict[str, MatrixSource] = {}
        self.var_names: dict[str, np.ndarray] = {}
        self.order: dict[str, np.ndarray | None] = {}
        for mod in self.modalities:
            key, field = self._matrix_key(mod, layers.get(mod))
            src = MatrixSource(self.path, key, backed, field)
            self.sources[mod] = src
            self.var_names[mod] = self._var_names(mod, src.shape[1])
        self._align_cells()

    # ---- tables ----------------------------------------------------------------------------------------
    # obs/var (of the file or of a MuData modality) in any layout, read with anndata's element reader. A
    # current-layout frame is read column by column, as asked (a 1M-cell obs may hold dozens of columns);
    # 0.7 and pre-0.7 frames are read whole, as anndata reads them, which resolves their categories.

    def _node(self, group: str) -> h5py.Group | h5py.Dataset:
        if group not in self.h5:
            raise DataError(self.path, f"{group}: missing (not an AnnData/MuData file?)")
        return self.h5[group]

    def _read(self, group: str, node: h5py.Group | h5py.Dataset) -> object:
        try:
            with _legacy_quiet():
                return read_elem(node)
        except Exception as exc:  # whatever anndata cannot decode, said in one line
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(self.path, f"{node.name.lstrip('/')}: cannot read ({msg})") from exc

    def _whole_frame(self, group: str) -> pd.DataFrame | None:
        """The frame of a 0.7 or pre-0.7 table (cached); None for a current-layout table."""
        node = self._node(group)
        if isinstance(node, h5py.Group) and _attr(node, "encoding-version") != "0.1.0":
            return None
        if group not in self._tables:
            value = self._read(group, node)
            if isinstance(node, h5py.Dataset):
                value = self._pre07_table(group, value)
            if not isinstance(value, pd.DataFrame):
                raise DataError(self.path, f"{group}: not a data frame (found {type(value).__name__})")
            self._tables[group] = value
        return self._tables[group]

    def _pre07_table(self, group: str, rec: np.ndarray) -> pd.DataFrame:
        """A pre-0.7 structured array: first field the index, categorical codes named by
        uns/<column>_categories (as anndata's own `_clean_uns` does it)."""
        if getattr(rec, "dtype", None) is None or rec.dtype.names is None:
            raise DataError(self.path, f"{group}: neither a data frame nor a structured array")
        index, *columns = rec.dtype.names
        df = pd.DataFrame({c: rec[c] for c in columns}, index=pd.Index(_as_names(rec[index])))
        uns_key = "uns"
        uns = self.h5.get(uns_key)
        for col in columns:
            key = f"{col}_categories"
            if not isinstance(uns, h5py.Group) or key not in uns or df[col].dtype.kind not in "iu":
                continue
            cats = self._read(uns_key, uns[key])
            cats = [cats] if np.ndim(cats) == 0 else list(cats)
            cats = [c.decode() if isinstance(c, bytes) else c for c in cats]
            codes = df[col].to_numpy()
            if codes.size and (codes.max() >= len(cats) or codes.min() < -1):
                # anndata keeps the codes here (obs and var once shared one entry per name): so do we,
                # but a setting that uses this column is refused rather than fed codes
                self._unnamed[f"{group}/{col}"] = (
                    f"{group}/{col}: categorical codes up to {int(codes.max())} for {len(cats)} names "
                    f"in {uns_key}/{key}; rewrite the file with anndata"
                )
                continue
            df[col] = pd.Categorical.from_codes(codes, cats)
        return df

    def _names(self, group: str) -> np.ndarray:
        """The index (cell or feature names) of a table, as Python strings."""
        if group not in self._name_cache:
            frame = self._whole_frame(group)
            if frame is not None:
                index = frame.index
            else:
                node = self._node(group)
                key = _attr(node, "_index") or "_index"
                if key not in node:
                    raise DataError(self.path, f"{group}: no index ({key!r})")
                index = self._read(group, node[key])
            self._name_cache[group] = _as_names(index)
        return self._name_cache[group]

    def _columns(self, group: str) -> list[str]:
        if group not in self.h5:
            return []
        frame = self._whole_frame(group)
        if frame is not None:
            return [str(c) for c in frame.columns]
        node = self.h5[group]
        order = node.attrs.get("column-order", [])
        return [c.decode() if isinstance(c, bytes) else str(c) for c in np.atleast_1d(order)]

    def _column(self, group: str, col: str) -> pd.Series:
        """One column as a Series in the table's row order; categoricals as names."""
        if f"{group}/{col}" in self._unnamed:
            raise DataError(self.path, self._unnamed[f"{group}/{col}"])
        frame = self._whole_frame(group)
        if frame is not None:
            return frame[col].reset_index(drop=True)
        values = self._read(group, self.h5[group][col])
        return pd.Series(values if isinstance(values, pd.Categorical) else np.asarray(values))

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
            names = self._names(f"mod/{mod}/var")
        elif mod == "X":
            names = self._names("var")
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
            names = self._names(f"mod/{mod}/obs") if self.is_mudata else self.obs_names
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
            if group in self.h5 and col in self._columns(group):
                series = self._column(group, col)
                if group == "obs" and not np.array_equal(self.obs_names, self.cell_names):
                    # the global obs of a MuData is indexed by its own (union) cell names
                    series.index = self.obs_names
                    series = series.reindex(self.cell_names)
                elif order is not None:
                    series = series.iloc[order]
                return series.reset_index(drop=True)
        raise DataError(self.path, f"obs key {key!r} not found (obs columns: {self._columns('obs')[:20]})")

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
        have = self._columns(group) if group else []
        if key not in have:
            raise DataError(
                self.path,
                f"var key {key!r} not found for modality {mod!r} (var columns: {have[:20]})",
            )
        return self._column(group, key)

    def _mod_order(self, mod: str) -> np.ndarray | None:
        names = self._names(f"mod/{mod}/obs")
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
        return self._names(f"mod/{mod}/obs") if self.is_mudata else self.obs_names

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
    order. A pre-0.7 file (whose `obsm` is one structured array) is rewritten by anndata in the current
    layout.
    """
    source, out_path = Path(source), Path(out_path)
    if source.resolve() == out_path.resolve():
        raise DataError(out_path, "refusing to overwrite the input file; choose another output path")
    embedding = np.asarray(embedding, dtype=np.float32)
    with open_hdf5(source) as f:
        pre07 = isinstance(f["obs"], h5py.Dataset)
        with _legacy_quiet():
            obs = read_elem(f["obs"])
        index = obs.index if isinstance(obs, pd.DataFrame) else obs[obs.dtype.names[0]]
        obs_names = _as_names(index).astype(str)
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

            with _legacy_quiet():
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
