"""SingleCellDataModule: bad AnnData/MuData input, backed == in-memory batches, splits, write-back."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import lightning.pytorch as pl
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from _single_cell_data import make_adata, one_line, write_h5ad
from _single_cell_data import write_mudata as _mudata
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.single_cell.datamodule import SingleCellDataModule


def test_backed_reads_the_same_batches_as_in_memory(tmp_path: Path) -> None:
    path = write_h5ad(tmp_path, make_adata(n=103))
    kw = dict(layers={"X": "counts"}, transforms={"X": "log1p"}, cell_type_key="cell_type", batch_size=16)
    out = []
    for backed in (False, True):
        dm = SingleCellDataModule(str(path), backed=backed, **kw)
        dm.setup("fit")
        dm.setup("fit")  # idempotent
        pl.seed_everything(3)
        out.append([(b.index.clone(), b.x["X"].clone(), b.label.clone()) for b in dm.train_dataloader()])
    assert len(out[0]) == len(out[1]) > 3
    for (i0, x0, l0), (i1, x1, l1) in zip(*out, strict=True):
        assert torch.equal(i0, i1) and torch.equal(l0, l1)
        assert torch.allclose(x0, x1)
    # and the batch matches the file read directly, in the shuffled order
    a = ad.read_h5ad(path)
    i0, x0, _ = out[1][0]
    raw = a.layers["counts"][i0.numpy()].toarray()
    expected = np.log1p(raw / raw.sum(1, keepdims=True) * 1e4)
    assert np.allclose(x0.numpy(), expected, atol=1e-5)


def test_h5ad_missing_layer(tmp_path: Path) -> None:
    path = write_h5ad(tmp_path, make_adata())
    with pytest.raises(DataError) as err:
        SingleCellDataModule(str(path), layers={"X": "raw_counts"}).setup("fit")
    one_line(err, "cells.h5ad", "layer 'raw_counts'")


def test_nan_counts(tmp_path: Path) -> None:
    a = make_adata()
    x = a.X.toarray()
    x[7, 3] = np.nan
    a.X = sp.csr_matrix(x)
    path = write_h5ad(tmp_path, a)
    with pytest.raises(DataError) as err:
        SingleCellDataModule(str(path)).setup("fit")
    one_line(err, "cells.h5ad", "NaN", "cell7")


def test_non_integer_counts_where_counts_are_required(tmp_path: Path) -> None:
    a = make_adata()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))
    path = write_h5ad(tmp_path, a)
    with pytest.raises(DataError) as err:
        SingleCellDataModule(str(path), transforms={"X": "log1p"}).setup("fit")
    one_line(err, "non-integer count")
    # fine when the layer of counts is chosen
    SingleCellDataModule(str(path), layers={"X": "counts"}, transforms={"X": "log1p"}).setup("fit")


def test_missing_obs_key(tmp_path: Path) -> None:
    path = write_h5ad(tmp_path, make_adata())
    with pytest.raises(DataError) as err:
        SingleCellDataModule(str(path), cell_type_key="celltype").setup("fit")
    one_line(err, "cells.h5ad", "obs key 'celltype'")


def test_mudata_with_mismatched_cells(tmp_path: Path) -> None:
    path = _mudata(tmp_path, n_adt=30)
    with pytest.raises(DataError) as err:
        SingleCellDataModule(str(path), modalities=["rna", "adt"]).setup("fit")
    one_line(err, "cite.h5mu", "'rna'", "'adt'", "different cells")


def test_mudata_modalities_pca_groups_and_write_back(tmp_path: Path) -> None:
    path = _mudata(tmp_path, n_adt=40)
    dm = SingleCellDataModule(
        str(path),
        modalities=["rna", "adt"],
        transforms={"rna": "binary", "adt": "clr"},
        n_top_features={"rna": 20},
        feature_group_key={"rna": "chrom"},
        pca_components={"adt": 4},
        cell_type_key="rna:cell_type",
        batch_size=8,
    )
    dm.setup("fit")
    kw = dm.model_kwargs()
    assert kw["modality_dims"] == {"rna": 20, "adt": 6}
    assert kw["pca_dims"] == {"adt": 4} and sum(kw["feature_groups"]["rna"]) == 20
    assert kw["n_classes"] == 3
    b = next(iter(dm.predict_dataloader()))
    assert set(b.x) == {"rna", "adt"} and b.pca["adt"].shape == (8, 4)
    assert set(b.x["rna"].unique().tolist()) <= {0.0, 1.0}
    emb = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    out = dm.write_embedding(emb, tmp_path / "out" / "copy.h5mu", "test")
    with h5py.File(out) as f:
        assert np.array_equal(f["obsm/X_test"][:], emb)
    with h5py.File(path) as f:
        assert "X_test" not in f["obsm"]  # the input is untouched
    with pytest.raises(DataError):
        dm.write_embedding(emb, path, "test")


def test_split_by_held_out_groups(tmp_path: Path) -> None:
    path = write_h5ad(tmp_path, make_adata())
    dm = SingleCellDataModule(
        str(path), split="groups", split_key="donor", test_groups=["d3"], val_groups=["d0"]
    )
    dm.setup("fit")
    donors = ad.read_h5ad(path).obs["donor"].to_numpy()
    assert set(donors[dm.test_idx]) == {"d3"} and set(donors[dm.val_idx]) == {"d0"}
    assert set(donors[dm.train_idx]) == {"d1", "d2"}
    with pytest.raises(DataError) as err:
        SingleCellDataModule(str(path), split="groups", split_key="donor", test_groups=["d9"]).setup("fit")
    one_line(err, "no group 'd9'")
