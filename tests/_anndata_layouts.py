"""AnnData/MuData files in the on-disk layouts of older anndata versions, written with h5py directly.

Files written before anndata 0.7 (and still shipped as examples) and 0.7-era files differ from today's:

- pre-0.7: `obs`/`var` are one structured (compound) dataset whose first field is the index; a categorical
  column is stored as its integer codes with the names in `uns/<column>_categories`; sparse matrices are
  groups tagged `h5sparse_format`/`h5sparse_shape`; `obsm` is one structured dataset (a field per key);
  no `encoding-type` attributes anywhere.
- 0.7: `obs`/`var` are groups (`encoding-type: dataframe`, `encoding-version: 0.1.0`); a categorical column
  is a dataset of integer codes whose `categories` attribute is an HDF5 object reference to
  `<group>/__categories/<column>`; sparse matrices carry `encoding-type: csr_matrix` and `shape`.

`anndata.read_h5ad` reads both (the tests check that first, so these writers are faithful to what anndata
accepts). Imported by tests, not collected.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

STR = h5py.string_dtype()  # variable-length UTF-8, what both old versions wrote for strings


def _matrix_pre07(group: h5py.Group, key: str, x: np.ndarray | sp.spmatrix) -> None:
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        g = group.create_group(key)
        g.attrs["h5sparse_format"] = "csr"
        g.attrs["h5sparse_shape"] = np.array(x.shape)
        g["data"], g["indices"], g["indptr"] = x.data, x.indices, x.indptr
    else:
        group[key] = np.asarray(x)


def _frame_pre07(f: h5py.File, key: str, df: pd.DataFrame) -> None:
    """One structured dataset; categorical columns become codes with their names in uns."""
    fields: list[tuple[str, np.ndarray]] = [("index", np.asarray(df.index.astype(str), dtype=object))]
    for col in df.columns:
        values = df[col]
        if isinstance(values.dtype, pd.CategoricalDtype):
            fields.append((col, values.cat.codes.to_numpy()))
            f.require_group("uns")[f"{col}_categories"] = np.array(values.cat.categories, dtype="S")
        elif values.dtype == object:
            fields.append((col, values.to_numpy(dtype=object)))
        else:
            fields.append((col, values.to_numpy()))
    dtype = [(name, STR if arr.dtype == object else arr.dtype) for name, arr in fields]
    rec = np.empty(len(df), dtype=dtype)
    for name, arr in fields:
        rec[name] = arr
    f.create_dataset(key, data=rec)


def write_pre07(a: ad.AnnData, path: Path) -> Path:
    """`a` as anndata 0.6 wrote it (X, layers, obsm, obs/var with categoricals)."""
    with h5py.File(path, "w") as f:
        _frame_pre07(f, "obs", a.obs)
        _frame_pre07(f, "var", a.var)
        _matrix_pre07(f, "X", a.X)
        layers = f.create_group("layers")
        for name, layer in a.layers.items():
            _matrix_pre07(layers, name, layer)
        if len(a.obsm):
            dtype = [(k, np.asarray(v).dtype, np.asarray(v).shape[1:]) for k, v in a.obsm.items()]
            rec = np.empty(a.n_obs, dtype=dtype)
            for k, v in a.obsm.items():
                rec[k] = np.asarray(v)
            f.create_dataset("obsm", data=rec)
        f.require_group("uns")
    return path


def _frame_v07(group: h5py.Group, key: str, df: pd.DataFrame) -> None:
    g = group.create_group(key)
    g.attrs["encoding-type"] = "dataframe"
    g.attrs["encoding-version"] = "0.1.0"
    g.attrs["_index"] = "_index"
    g.attrs["column-order"] = np.array(list(df.columns), dtype=object) if len(df.columns) else np.array([])
    g.create_dataset("_index", data=np.asarray(df.index.astype(str), dtype=object), dtype=STR)
    for col in df.columns:
        values = df[col]
        if isinstance(values.dtype, pd.CategoricalDtype):
            cats = g.create_dataset(
                f"__categories/{col}", data=np.asarray(values.cat.categories, dtype=object), dtype=STR
            )
            cats.attrs["ordered"] = bool(values.cat.ordered)
            g[col] = values.cat.codes.to_numpy()
            g[col].attrs["categories"] = cats.ref
        elif values.dtype == object:
            g.create_dataset(col, data=values.to_numpy(dtype=object), dtype=STR)
        else:
            g[col] = values.to_numpy()


def _matrix_v07(group: h5py.Group, key: str, x: np.ndarray | sp.spmatrix) -> None:
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        g = group.create_group(key)
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.array(x.shape)
        g["data"], g["indices"], g["indptr"] = x.data, x.indices, x.indptr
    else:
        group[key] = np.asarray(x)


def _anndata_v07(g: h5py.Group, a: ad.AnnData) -> None:
    _frame_v07(g, "obs", a.obs)
    _frame_v07(g, "var", a.var)
    _matrix_v07(g, "X", a.X)
    layers = g.create_group("layers")
    for name, layer in a.layers.items():
        _matrix_v07(layers, name, layer)
    obsm = g.create_group("obsm")
    for name, value in a.obsm.items():
        _matrix_v07(obsm, name, value)
    g.create_group("uns")


def write_v07(a: ad.AnnData, path: Path) -> Path:
    """`a` as anndata 0.7 wrote it (categoricals as codes referring to `__categories`)."""
    with h5py.File(path, "w") as f:
        _anndata_v07(f, a)
    return path


def write_v07_h5mu(mods: dict[str, ad.AnnData], path: Path) -> Path:
    """A MuData of anndata-0.7-layout modalities (as mudata 0.1 wrote them); the global obs is the first
    modality's."""
    first = next(iter(mods.values()))
    with h5py.File(path, "w") as f:
        mod = f.create_group("mod")
        mod.attrs["mod-order"] = np.array(list(mods), dtype=object)
        for name, a in mods.items():
            _anndata_v07(mod.create_group(name), a)
        _frame_v07(f, "obs", first.obs)
        _frame_v07(f, "var", pd.concat([m.var for m in mods.values()]))
        f.create_group("obsm")
        f.create_group("uns")
    return path
