"""The sparse-shift simulator: shapes, distinct targets, per-cell normalization, determinism, the writer."""

import anndata
import numpy as np
import pytest
from plexlab.datamodules.single_cell.perturbation_sim import simulate_sparse_shift, write_sparse_shift

SMALL = dict(
    n_perturbations=12, n_cells_per_perturbation=30, n_control_cells=40, n_latents=6, n_genes=25, n_hidden=10
)


def test_shapes_and_labels():
    ad = simulate_sparse_shift(**SMALL, seed=1)
    assert ad.shape == (12 * 30 + 40, 25)
    counts = ad.obs["perturbation"].value_counts()
    assert counts["control"] == 40
    assert (counts.drop("control") == 30).all() and len(counts) == 13
    assert ad.obsm["z_true"].shape == (ad.n_obs, 6)
    assert ad.uns["target_graph"].shape == (12, 6)
    assert ad.uns["shift_means"].shape == (12, 6)
    assert list(ad.uns["perturbation_names"]) == [f"P{a:03d}" for a in range(12)]
    x = np.asarray(ad.X)
    assert (x >= 0).all() and np.array_equal(x, np.round(x))


def test_targets_are_distinct_and_shifts_sparse():
    # Exactly 3 targets out of 3 latents: drawing with replacement would almost surely repeat one.
    ad = simulate_sparse_shift(**{**SMALL, "n_latents": 3, "n_hidden": 10}, min_targets=3, max_targets=3)
    assert (ad.uns["target_graph"].sum(1) == 3).all()
    ad = simulate_sparse_shift(**{**SMALL, "n_perturbations": 200})
    k = ad.uns["target_graph"].sum(1)
    assert set(np.unique(k)) == {1, 2, 3}
    shifts, graph = ad.uns["shift_means"], ad.uns["target_graph"].astype(bool)
    assert (shifts[~graph] == 0).all()
    assert 4.0 < np.abs(shifts[graph]).mean() < 6.0
    assert (shifts[graph] > 0).any() and (shifts[graph] < 0).any()


def test_latents_follow_the_shifts():
    ad = simulate_sparse_shift(**SMALL, seed=3)
    z, labels = ad.obsm["z_true"], ad.obs["perturbation"].astype(str).to_numpy()
    assert np.abs(z[labels == "control"].mean(0)).max() < 0.6
    for a, name in enumerate(ad.uns["perturbation_names"]):
        np.testing.assert_allclose(z[labels == name].mean(0), ad.uns["shift_means"][a], atol=0.8)


def test_softmax_is_over_genes_per_cell():
    # Normalizing over cells (the reference's slip) would make per-cell totals depend on the expression
    # profile; over genes every cell's total is its library (median 2000, log-normal spread 0.25).
    ad = simulate_sparse_shift(**SMALL, library_log_std=0.0)
    totals = np.asarray(ad.X).sum(1)
    assert np.allclose(totals, 2000, rtol=0.1)


def test_deterministic_per_seed_and_writer(tmp_path):
    a, b = simulate_sparse_shift(**SMALL, seed=5), simulate_sparse_shift(**SMALL, seed=5)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.uns["target_graph"], b.uns["target_graph"])
    assert not np.array_equal(a.X, simulate_sparse_shift(**SMALL, seed=6).X)
    out = write_sparse_shift(tmp_path / "sub" / "sim.h5ad", **SMALL, seed=5)
    assert sorted(p.name for p in out.parent.iterdir()) == ["sim.h5ad"]  # no temporary file left behind
    back = anndata.read_h5ad(out)
    assert np.array_equal(back.X, a.X)
    assert np.array_equal(back.uns["target_graph"], a.uns["target_graph"])
    assert str(back.uns["control_label"]) == "control"


def test_rejects_impossible_settings():
    with pytest.raises(ValueError, match="min_targets"):
        simulate_sparse_shift(**SMALL, min_targets=2, max_targets=7)
