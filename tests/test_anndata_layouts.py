"""The single-cell reader on every AnnData layout anndata reads: pre-0.7, 0.7 and current, in memory and
backed, for .h5ad and .h5mu, also through the real runner; plus count-error messages and progress output."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from _anndata_layouts import write_pre07, write_v07, write_v07_h5mu
from _single_cell_data import make_adata, one_line
from mlflow.tracking import MlflowClient
from plexlab import api
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.single_cell import matrix
from plexlab.datamodules.single_cell.datamodule import SingleCellDataModule


def annotated(n: int = 60, dense: bool = False) -> ad.AnnData:
    """make_adata with categorical obs/var columns (the ones old layouts store as codes) and an obsm."""
    a = make_adata(n=n)
    a.obs["cell_type"] = pd.Categorical(a.obs["cell_type"], categories=["T", "B", "NK"])  # not sorted
    a.obs["donor"] = pd.Categorical(a.obs["donor"])
    a.obs["size_factor"] = np.linspace(0.5, 2.0, n)
    a.var["chrom"] = pd.Categorical(a.var["chrom"])
    a.obsm["X_pca"] = np.random.default_rng(1).normal(size=(n, 3)).astype(np.float32)
    if dense:
        a.X = a.X.toarray()
    return a


def write_layout(tmp: Path, layout: str, a: ad.AnnData) -> Path:
    path = tmp / f"{layout}.h5ad"
    if layout == "current":
        a.write_h5ad(path)
    elif layout == "v07":
        write_v07(a, path)
    else:
        write_pre07(a, path)
    return path


LAYOUTS = ["current", "v07", "pre07", "pre07_dense"]


@pytest.mark.parametrize("layout", ["v07", "pre07", "pre07_dense"])
def test_the_layout_writers_write_what_anndata_reads(layout: str, tmp_path: Path) -> None:
    """The legacy writers are faithful: anndata itself reads the names, categories, matrices back."""
    a = annotated(dense=layout.endswith("dense"))
    path = write_layout(tmp_path, layout, a)
    for backed in (None, "r"):
        b = ad.read_h5ad(path, backed=backed)
        assert list(b.obs_names) == list(a.obs_names) and list(b.var_names) == list(a.var_names)
        assert b.obs["cell_type"].tolist() == a.obs["cell_type"].tolist()
        assert b.var["chrom"].tolist() == a.var["chrom"].tolist()
        x = b.X[:] if backed else b.X
        x = x.toarray() if sp.issparse(x) else np.asarray(x)
        assert np.array_equal(x, a.X.toarray() if sp.issparse(a.X) else a.X)
        if backed:
            b.file.close()
    with h5py.File(path) as f:  # and they are the old layouts, not today's
        assert "encoding-type" not in f.attrs
        assert isinstance(f["obs"], h5py.Dataset) == layout.startswith("pre07")
        if layout == "v07":
            assert "__categories" in f["obs"] and f["obs"]["cell_type"].dtype.kind == "i"


def _module(path: Path, backed: bool, **kw) -> SingleCellDataModule:
    dm = SingleCellDataModule(
        str(path),
        backed=backed,
        layers={"X": "counts"},
        transforms={"X": "log1p"},
        cell_type_key="cell_type",
        batch_key="batch",
        feature_group_key={"X": "chrom"},
        split="groups",
        split_key="donor",
        test_groups=["d3"],
        val_groups=["d0"],
        batch_size=16,
        **kw,
    )
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("backed", [False, True], ids=["memory", "backed"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_names_not_codes(layout: str, backed: bool, tmp_path: Path) -> None:
    a = annotated(dense=layout.endswith("dense"))
    path = write_layout(tmp_path, layout, a)
    dm = _module(path, backed)
    # categorical columns as their names, in every layout (codes would give '0', '1', '2')
    assert dm.label_names == ["B", "NK", "T"]
    assert [dm.label_names[k] for k in dm.labels] == a.obs["cell_type"].tolist()
    assert dm.batch_names == ["b0", "b1"]
    donors = a.obs["donor"].to_numpy()
    assert set(donors[dm.test_idx]) == {"d3"} and set(donors[dm.val_idx]) == {"d0"}
    # features grouped by the categorical var column, in sorted group order
    chrom = a.var["chrom"].to_numpy()
    assert dm.feature_groups["X"] == [int((chrom == "chr1").sum()), int((chrom == "chr2").sum())]
    assert dm.feature_names("X") == list(a.var_names[np.argsort(chrom, kind="stable")])
    # the batch is the counts layer, log1p-normalized, with features in group order
    b = next(iter(dm.predict_dataloader()))
    raw = a.layers["counts"].toarray()[b.index.numpy()][:, np.argsort(chrom, kind="stable")]
    assert np.allclose(b.x["X"].numpy(), np.log1p(raw / raw.sum(1, keepdims=True) * 1e4), atol=1e-5)
    assert dm.sample_ids() == list(a.obs_names)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_obsm_modality_and_library_size_key_in_every_layout(layout: str, tmp_path: Path) -> None:
    a = annotated(dense=layout.endswith("dense"))
    path = write_layout(tmp_path, layout, a)
    for backed in (False, True):
        dm = SingleCellDataModule(
            str(path), modalities=["X", "X_pca"], library_size_key="size_factor", backed=backed
        )
        dm.setup("fit")
        b = next(iter(dm.predict_dataloader()))
        assert np.allclose(b.x["X_pca"].numpy(), a.obsm["X_pca"][b.index.numpy()])
        loglib = np.log(a.obs["size_factor"].to_numpy())
        assert np.allclose(dm.library, (loglib - loglib.mean()) / loglib.std(), atol=1e-6)


@pytest.mark.parametrize("layout", ["v07", "pre07"])
def test_missing_obs_key_lists_the_columns_not_the_storage(layout: str, tmp_path: Path) -> None:
    path = write_layout(tmp_path, layout, annotated())
    with pytest.raises(DataError) as err:
        SingleCellDataModule(str(path), cell_type_key="celltype").setup("fit")
    one_line(err, str(path), "obs key 'celltype'", "'cell_type'", "'size_factor'")
    assert "__categories" not in str(err.value) and "index" not in str(err.value)


def _v07_mudata(tmp: Path) -> tuple[Path, ad.AnnData]:
    rna = annotated(n=40)
    adt = make_adata(n=40, g=6, seed=1)
    adt.obs["cell_type"] = rna.obs["cell_type"]
    return write_v07_h5mu({"rna": rna, "adt": adt}, tmp / "cite_v07.h5mu"), rna


@pytest.mark.parametrize("backed", [False, True], ids=["memory", "backed"])
def test_mudata_in_the_07_layout(backed: bool, tmp_path: Path) -> None:
    path, rna = _v07_mudata(tmp_path)
    import mudata as md

    assert md.read_h5mu(path)["rna"].obs["cell_type"].tolist() == rna.obs["cell_type"].tolist()
    for key in ("rna:cell_type", "cell_type"):  # a modality's own obs, and the global obs
        dm = SingleCellDataModule(
            str(path), transforms={"rna": "log1p", "adt": "clr"}, cell_type_key=key, backed=backed
        )
        dm.setup("fit")
        assert dm.modalities == ["rna", "adt"] and dm.label_names == ["B", "NK", "T"]
        assert [dm.label_names[k] for k in dm.labels] == rna.obs["cell_type"].tolist()


def test_write_embedding_into_a_copy_of_a_pre07_file(tmp_path: Path) -> None:
    a = annotated()
    path = write_layout(tmp_path, "pre07", a)
    dm = SingleCellDataModule(str(path), cell_type_key="cell_type")
    dm.setup("fit")
    emb = np.arange(a.n_obs * 2, dtype=np.float32).reshape(-1, 2)
    out = dm.write_embedding(emb, tmp_path / "out.h5ad", "test")
    b = ad.read_h5ad(out)
    assert np.array_equal(b.obsm["X_test"], emb) and np.allclose(b.obsm["X_pca"], a.obsm["X_pca"])
    assert b.obs["cell_type"].tolist() == a.obs["cell_type"].tolist()


# ---- messages ------------------------------------------------------------------------------------------


def test_count_errors_name_the_value_cell_and_the_setting(tmp_path: Path) -> None:
    a = annotated()
    x = a.X.toarray()
    x[5, 2] = -3
    a.X = sp.csr_matrix(x)
    path = write_layout(tmp_path, "v07", a)
    with pytest.raises(DataError) as err:
        SingleCellDataModule(str(path), transforms={"X": "log1p"}).setup("fit")
    one_line(err, "X: negative count -3 at cell 'cell5' (row 5)", "data.layers", "['counts']")
    one_line(err, "data.counts_required", "data.library_size_key")
    # the library size from obs: a normalized column is refused with the value formatted, not a numpy repr
    a.obs["size_factor"] = np.linspace(-0.326, 1.0, a.n_obs)
    path = write_layout(tmp_path, "current", a)
    with pytest.raises(DataError) as err:
        SingleCellDataModule(str(path), layers={"X": "counts"}, library_size_key="size_factor").setup("fit")
    one_line(err, "obs key 'size_factor': library size -0.326 at cell 'cell0'", "library_size_key")
    assert "np." not in str(err.value)


def test_a_missing_layer_names_the_setting_and_the_choices(tmp_path: Path) -> None:
    path, _ = _v07_mudata(tmp_path)
    with pytest.raises(DataError) as err:
        SingleCellDataModule(str(path), layers={"rna": "raw"}).setup("fit")
    one_line(err, str(path), "layer 'raw' not found in modality 'rna' (layers: ['counts'])", "data.layers")


# ---- progress --------------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_long_passes_show_progress_on_a_terminal_only(
    terminal: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_layout(tmp_path, "current", annotated())
    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(matrix, "PROGRESS_DELAY_S", 0.0)  # the real delay hides passes under 2 s
    SingleCellDataModule(str(path), backed=True, transforms={"X": "log1p"}).setup("fit")
    text = err.getvalue()
    if terminal:
        assert "checking X" in text and "reading X" in text and "/60.0 [" in text
    else:  # no bar (a warning from another library may still be printed there)
        assert "checking X" not in text and "reading X" not in text, text


# ---- through the runner -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["pre07", "v07", "v07_h5mu"])
def test_legacy_files_through_the_runner(layout: str, workdir: Path, one_torch_thread) -> None:
    """`plexlab.api.fit` with MLflow on: a tiny SAILERX on each legacy layout, split by a categorical column
    (read as codes, the held-out donor 'd3' would not exist)."""
    if layout == "v07_h5mu":
        path, _ = _v07_mudata(workdir)
        data = {"modalities": ["rna", "adt"], "transforms": {"rna": "binary", "adt": "clr"}}
        data["cell_type_key"], data["split_key"] = "rna:cell_type", "rna:donor"
    else:
        path = write_layout(workdir, layout, annotated(n=80))
        data = {"modalities": ["X"], "layers": {"X": "counts"}, "transforms": {"X": "binary"}}
        data["cell_type_key"], data["split_key"] = "cell_type", "donor"
    config = {
        "name": f"legacy-{layout}",
        "seed": 0,
        "model": {"name": "sailerx", "group_hidden": [8], "latent_dim": 2, "warmup_epochs": 1},
        "data": {
            "name": "single_cell",
            "path": str(path),
            "split": "groups",
            "test_groups": ["d3"],
            "val_groups": ["d0"],
            "batch_size": 16,
            "backed": layout == "v07",
            **data,
        },
        "trainer": {"max_epochs": 1, "accelerator": "cpu"},
    }
    result = api.fit(config)
    run = MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.n_classes"] == "3"
    assert any(k.startswith("test/") for k in result.metrics)


def test_a_legacy_file_error_is_one_line_from_the_real_command(workdir: Path) -> None:
    """In its own process (where warnings are not captured): anndata's old-format warnings and the progress
    bar add no lines to the one error line."""
    a = annotated()
    x = a.X.toarray()
    x[7, 3] = np.nan
    a.X = x
    path = write_pre07(a, workdir / "pre07.h5ad")
    config = {
        "name": "legacy",
        "model": {"name": "sailerx", "group_hidden": [8], "latent_dim": 2},
        "data": {"name": "single_cell", "path": str(path), "cell_type_key": "cell_type"},
        "trainer": {"max_epochs": 1, "accelerator": "cpu"},
    }
    (workdir / "exp.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-m", "plexlab.cli", "fit", "exp.yaml"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line == f"plexlab: error: {path}: X: NaN value at cell 'cell7' (row 7); " + (
        "choose another layer with data.layers (layers in the file: ['counts'])"
    )


# ---- real files --------------------------------------------------------------------------------------------


def test_real_files_read_names_the_same_backed_and_in_memory(shared_data: Path) -> None:
    """The CRISPR screen .h5ad (categorical guides) and the CITE-seq .h5mu, against anndata/mudata."""
    import mudata as md

    h5ad = shared_data / "single_cell" / "perturbseq_papalexi2021.h5ad"
    a = ad.read_h5ad(h5ad)
    dms = [SingleCellDataModule(str(h5ad), cell_type_key="perturbation", backed=b) for b in (False, True)]
    for dm in dms:
        dm.setup("fit")
        assert dm.label_names == sorted(a.obs["perturbation"].cat.categories)
        assert [dm.label_names[k] for k in dm.labels] == a.obs["perturbation"].astype(str).tolist()
    cells = np.array([0, 5, 20_000, 3])
    assert np.array_equal(dms[0].file.read("X", cells), a.X[cells].toarray())
    assert np.array_equal(dms[1].file.read("X", cells), a.X[cells].toarray())

    h5mu = shared_data / "single_cell" / "citeseq_citefuse_500cells.h5mu"
    mdata = md.read_h5mu(h5mu)
    dm = SingleCellDataModule(str(h5mu), modalities=["ADT", "HTO"], transforms={"ADT": "clr"}, backed=True)
    dm.setup("fit")
    assert dm.modalities == ["ADT", "HTO"] and dm.sample_ids() == list(mdata["ADT"].obs_names)
    assert np.array_equal(dm.file.read("HTO", cells[[0, 1, 3]]), mdata["HTO"].X[[0, 5, 3]].toarray())
