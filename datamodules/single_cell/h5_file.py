"""AnnData/MuData HDF5 files in any layout anndata reads: opening, file kind, matrix layouts, obs/var tables.

The layouts, all read by `anndata.read_h5ad`:

- current (anndata >= 0.8): `encoding-type` attributes everywhere, categoricals as `categories`/`codes`.
- 0.7-era: data frames at `encoding-version` 0.1.0, a categorical column stored as integer codes that
  refer to `<obs|var>/__categories/<column>`.
- pre-0.7: `obs`/`var` as one structured array (the first field is the index), categorical names in
  `uns/<column>_categories`, sparse matrices tagged `h5sparse_format`, `obsm` as one structured array.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from anndata import OldFormatWarning
from anndata.io import read_elem
from plexlab.datamodules.errors import DataError

SUFFIXES = {".h5ad": "AnnData", ".h5mu": "MuData"}


@contextmanager
def legacy_quiet() -> Iterator[None]:
    """Old layouts are read on purpose: anndata's OldFormatWarning per element would only add noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OldFormatWarning)
        yield


def as_names(values: object) -> np.ndarray:
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


def check_kind(path: Path, h5: h5py.File) -> bool:
    """True for a MuData file; DataError when the contents and the file name disagree."""
    enc = attr(h5, "encoding-type").lower()
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
        if not check_kind(path, h5):
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


def attr(node: h5py.HLObject, name: str) -> str:
    """A string attribute (written as str or bytes by different versions); '' when absent."""
    value = node.attrs.get(name, "")
    return value.decode() if isinstance(value, bytes) else str(value)


def matrix_layout(node: h5py.Group | h5py.Dataset) -> tuple[str, tuple[int, ...]] | None:
    """('csr' | 'csc' | 'dense', shape) of a stored matrix in any anndata layout; None if not a matrix."""
    attrs = node.attrs
    enc = attr(node, "encoding-type")
    if isinstance(node, h5py.Group):
        if enc in ("csr_matrix", "csc_matrix"):
            fmt, shape = enc[:3], attrs.get("shape")
        elif "h5sparse_format" in attrs:  # pre-0.7 sparse
            fmt, shape = attr(node, "h5sparse_format"), attrs.get("h5sparse_shape")
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


class Tables:
    """The obs/var tables of one open file and of its MuData modalities (`obs`, `mod/rna/var`...).

    Read with anndata's element reader (`anndata.io.read_elem`). A current-layout table is read column by
    column, as asked (a 1M-cell obs may hold dozens of columns); 0.7 and pre-0.7 tables are read whole, as
    anndata reads them, which resolves their categories. Categorical columns come back as names.
    """

    def __init__(self, path: Path, h5: h5py.File) -> None:
        self.path = path
        self.h5 = h5
        self._frames: dict[str, pd.DataFrame] = {}
        self._index: dict[str, np.ndarray] = {}
        self._unnamed: dict[str, str] = {}  # pre-0.7 categorical columns whose names do not fit

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["h5"] = None  # reattached by the owner after unpickling
        return state

    def _node(self, group: str) -> h5py.Group | h5py.Dataset:
        if group not in self.h5:
            raise DataError(self.path, f"{group}: missing (not an AnnData/MuData file?)")
        return self.h5[group]

    def _read(self, group: str, node: h5py.Group | h5py.Dataset) -> object:
        try:
            with legacy_quiet():
                return read_elem(node)
        except Exception as exc:  # whatever anndata cannot decode, said in one line
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(self.path, f"{node.name.lstrip('/')}: cannot read ({msg})") from exc

    def _whole_frame(self, group: str) -> pd.DataFrame | None:
        """The frame of a 0.7 or pre-0.7 table (cached); None for a current-layout table."""
        node = self._node(group)
        if isinstance(node, h5py.Group) and attr(node, "encoding-version") != "0.1.0":
            return None
        if group not in self._frames:
            value = self._read(group, node)
            if isinstance(node, h5py.Dataset):
                value = self._pre07_table(group, value)
            if not isinstance(value, pd.DataFrame):
                raise DataError(self.path, f"{group}: not a data frame (found {type(value).__name__})")
            self._frames[group] = value
        return self._frames[group]

    def _pre07_table(self, group: str, rec: np.ndarray) -> pd.DataFrame:
        """A pre-0.7 structured array: first field the index, categorical codes named by
        uns/<column>_categories (as anndata's own `_clean_uns` does it)."""
        if getattr(rec, "dtype", None) is None or rec.dtype.names is None:
            raise DataError(self.path, f"{group}: neither a data frame nor a structured array")
        index, *columns = rec.dtype.names
        df = pd.DataFrame({c: rec[c] for c in columns}, index=pd.Index(as_names(rec[index])))
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

    def names(self, group: str) -> np.ndarray:
        """The index (cell or feature names) of a table, as Python strings."""
        if group not in self._index:
            frame = self._whole_frame(group)
            if frame is not None:
                index = frame.index
            else:
                node = self._node(group)
                key = attr(node, "_index") or "_index"
                if key not in node:
                    raise DataError(self.path, f"{group}: no index ({key!r})")
                index = self._read(group, node[key])
            self._index[group] = as_names(index)
        return self._index[group]

    def columns(self, group: str) -> list[str]:
        if group not in self.h5:
            return []
        frame = self._whole_frame(group)
        if frame is not None:
            return [str(c) for c in frame.columns]
        node = self.h5[group]
        order = node.attrs.get("column-order", [])
        return [c.decode() if isinstance(c, bytes) else str(c) for c in np.atleast_1d(order)]

    def column(self, group: str, col: str) -> pd.Series:
        """One column as a Series in the table's row order; categoricals as names."""
        if f"{group}/{col}" in self._unnamed:
            raise DataError(self.path, self._unnamed[f"{group}/{col}"])
        frame = self._whole_frame(group)
        if frame is not None:
            return frame[col].reset_index(drop=True)
        values = self._read(group, self.h5[group][col])
        return pd.Series(values if isinstance(values, pd.Categorical) else np.asarray(values))
