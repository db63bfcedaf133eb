"""One cells x features matrix of an AnnData/MuData file (X, a layer, an obsm entry), read by rows in
memory or backed, with its value checks; progress bars for passes over a whole matrix."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp
from anndata.io import read_elem, sparse_dataset
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.single_cell.h5_file import legacy_quiet, matrix_layout
from tqdm import tqdm

log = logging.getLogger(__name__)

CHUNK_ROWS = 2048
PROGRESS_DELAY_S = 2.0  # a pass shorter than this never shows a bar


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
        layout = matrix_layout(node)
        if layout is None:
            enc = node.attrs.get("encoding-type", type(node).__name__)
            raise DataError(path, f"{key}: expected a 2-D matrix (dense or CSR/CSC), found {str(enc)!r}")
        self.format, self.shape = layout
        if self.format == "csc" and backed:
            log.warning("%s: %s is CSC; backed row reads from CSC are slow (store it as CSR)", path, key)
        if not backed:
            with legacy_quiet():
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
            with legacy_quiet():
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
