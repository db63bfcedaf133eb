"""PerturbationDataModule: validation (one-line DataError), splits, held-out perturbations, ground truth."""

import numpy as np
import pytest
import scipy.sparse as sp
from _perturbation_files import write_perturbation as _write
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.single_cell.perturbation import PerturbationDataModule
from plexlab.datamodules.single_cell.perturbation_sim import write_sparse_shift

SIM = dict(
    n_perturbations=8, n_cells_per_perturbation=20, n_control_cells=20, n_latents=4, n_genes=12, n_hidden=8
)


def _error(path, **kw):
    dm = PerturbationDataModule(path=str(path), **kw)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_bad_inputs_give_one_line_data_errors(tmp_path):
    good = np.ones((8, 3), dtype=np.float32)
    assert "file not found" in _error(tmp_path / "nope.h5ad", perturbation_key="guide")
    assert "'gene'" in _error(_write(tmp_path, good), perturbation_key="gene")
    assert "layer 'counts'" in _error(_write(tmp_path, good), perturbation_key="guide", layer="counts")
    bad = good.copy()
    bad[2, 1] = -1
    msg = _error(_write(tmp_path, bad, name="neg.h5ad"), perturbation_key="guide")
    assert "negative" in msg and "'c2'" in msg and "'g1'" in msg
    bad = good.copy()
    bad[5, 0] = 1.5
    assert "non-integer" in _error(
        _write(tmp_path, sp.csr_matrix(bad), name="frac.h5ad"), perturbation_key="guide"
    )
    bad = good.copy()
    bad[3, 2] = np.nan
    msg = _error(
        _write(tmp_path, good, layers={"counts": bad}, name="nan.h5ad"),
        perturbation_key="guide",
        layer="counts",
    )
    assert "NaN" in msg and "layer 'counts'" in msg
    assert "control label" in _error(_write(tmp_path, good), perturbation_key="guide", control_label="ctrl")
    (tmp_path / "junk.h5ad").write_text("not hdf5")
    assert "cannot read" in _error(tmp_path / "junk.h5ad", perturbation_key="guide")


def test_reads_counts_and_detects_controls(tmp_path):
    x = np.random.default_rng(0).poisson(3, size=(40, 6)).astype(np.float32)
    x[7] = 0  # an empty cell is dropped
    dm = PerturbationDataModule(
        path=str(_write(tmp_path, sp.csr_matrix(x))), perturbation_key="guide", batch_size=8
    )
    dm.setup("fit")
    assert dm.control_labels == ["NT"] and dm.perturbation_names == ["A", "B", "C"]
    assert dm.model_kwargs()["n_genes"] == 6 and dm.model_kwargs()["n_perturbations"] == 3
    rows = np.concatenate([dm.split_rows[s] for s in ("train", "val", "test")])
    assert 7 not in rows and len(rows) == 39 and len(set(rows)) == 39
    batch = next(iter(dm.val_dataloader()))
    np.testing.assert_allclose(batch["library"].numpy(), x[batch["index"].numpy()].sum(1))
    assert set(batch["perturbation"].tolist()) <= {-1, 0, 1, 2}
    assert (batch["perturbation"][[i % 4 == 0 for i in batch["index"].tolist()]] == -1).all()


def test_simulated_splits_heldout_and_ground_truth(tmp_path):
    path = write_sparse_shift(tmp_path / "sim.h5ad", **SIM, seed=2)
    dm = PerturbationDataModule(path=str(path), n_heldout=2, seed=1, batch_size=32)
    dm.setup("fit")
    dm.setup("fit")  # idempotent
    assert len(dm.heldout_index) == 2 and dm.control_labels == ["control"]
    held = set(dm.heldout_index.tolist())
    pert = dm.tensors["perturbation"].numpy()
    seen = np.concatenate([dm.split_rows[s] for s in ("train", "val", "test")])
    assert not (set(pert[seen]) & held)
    fit, ev = dm.split_rows["transfer_fit"], dm.split_rows["transfer_eval"]
    assert set(pert[fit]) == held == set(pert[ev]) and not set(fit) & set(ev)
    assert len(fit) + len(ev) == 40
    assert dm.true_targets.shape == (8, 4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["z_true"].shape == (32, 4) and batch["x"].shape == (32, 12)
    assert dm.model_kwargs()["n_train_cells"] == len(dm.split_rows["train"])
    assert len(dm.sample_ids()) == 180 and sum(len(b["x"]) for b in dm.predict_dataloader()) == 180


def test_needs_exactly_one_source():
    with pytest.raises(ValueError):
        PerturbationDataModule()
    with pytest.raises(ValueError):
        PerturbationDataModule(path="x.h5ad", simulate=True)


def test_papalexi(shared_data):
    path = shared_data / "single_cell" / "perturbseq_papalexi2021.h5ad"
    dm = PerturbationDataModule(path=str(path), perturbation_key="perturbation", n_heldout=5)
    dm.setup("fit")
    assert dm.control_labels == ["non-targeting"]
    assert dm.model_kwargs()["n_genes"] == 299 and dm.model_kwargs()["n_perturbations"] == 25
    assert len(dm.heldout_perturbations) == 5
