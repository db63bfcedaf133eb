"""AffinityDataModule: reading, validation (one-line DataErrors), contact maps, splits and padded batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _affinity_files import SEQS, pairs, write_tsv
from _affinity_files import write_ca_pdb as _write_pdb
from plexlab.datamodules.affinity.contacts import band_edges, ca_contact_map
from plexlab.datamodules.affinity.datamodule import AffinityDataModule
from plexlab.datamodules.affinity.molecule import ATOM_DIM, featurize_smiles, protein_composition
from plexlab.datamodules.affinity.sampler import BucketBatchSampler
from plexlab.datamodules.errors import DataError


def make_dir(tmp_path: Path, n_train: int = 20, n_test: int = 6) -> Path:
    write_tsv(tmp_path / "train.tsv", pairs(n_train))
    write_tsv(tmp_path / "test.tsv", pairs(n_test, seed=1))
    return tmp_path


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_molecule_features() -> None:
    g = featurize_smiles("c1ccccc1O")
    assert g.x.shape == (7, ATOM_DIM) and g.edges.shape == (7, 2)
    # phenol: six aromatic carbons, one oxygen with one H
    aromatic_col = 13 + 7 + 6  # after element (12+1), degree (6+1), charge (5+1)
    assert g.x[:, aromatic_col].sum() == 6
    h = featurize_smiles("[H]OC([H])([H])C")  # explicit hydrogens: heavy graph, explicit order kept
    assert h.n_atoms == 3 and h.n_explicit_atoms == 6 and h.heavy_index.tolist() == [1, 2, 5]
    comp = protein_composition("AAW")
    assert comp[:20].sum() == pytest.approx(1.0) and comp[0] == pytest.approx(2 / 3)
    assert comp[20:].sum() == pytest.approx(1.0)


def test_band_edges() -> None:
    e = band_edges(4, 1)
    got = sorted(zip(e[0].tolist(), e[1].tolist(), strict=True))
    want = sorted({(i, j) for i in range(4) for j in range(4) if abs(i - j) <= 1})
    assert got == want


def test_pooled_buckets_mix_proteins() -> None:
    """BindingDB-like lengths: 200 proteins (one length each), 10 samples each. A global length sort puts
    a protein's samples together (few proteins per batch); pools of batches mix them while each batch spans
    a narrow length range, every sample comes once per epoch, and epochs differ."""
    rng = np.random.default_rng(0)
    prot_len = rng.integers(100, 1000, size=200)
    lengths = np.repeat(prot_len, 10)
    for pool in (None, 10):
        sampler = BucketBatchSampler(lengths.tolist(), 32, shuffle=True, seed=0, pool_batches=pool)
        epoch = list(sampler)
        assert len(epoch) == len(sampler)
        assert sorted(i for b in epoch for i in b) == list(range(len(lengths)))
        assert max(len(b) for b in epoch) == 32
        proteins = np.mean([len(set(lengths[b].tolist())) for b in epoch])
        spread = np.mean([lengths[b].max() / lengths[b].min() for b in epoch])
        if pool is None:
            assert proteins < 5
        else:
            assert proteins > 12, proteins  # about 32 distinct proteins would be fully random
            assert spread < 1.5, spread  # length-bucketed inside the pool (random batches: ~10)
            assert epoch != list(sampler)  # reshuffled each epoch
    ordered = list(BucketBatchSampler(lengths.tolist(), 32, shuffle=False, seed=0, pool_batches=10))
    assert [i for b in ordered for i in b] == np.argsort(lengths, kind="stable").tolist()  # eval: unchanged


def test_reads_and_batches(tmp_path: Path) -> None:
    dm = AffinityDataModule(str(make_dir(tmp_path)), batch_size=8, seed=0)
    dm.setup("fit")
    dm.setup("fit")  # idempotent
    assert len(dm.sets["train"]) + len(dm.sets["val"]) == 20 and len(dm.sets["test"]) == 6
    kw = dm.model_kwargs()
    assert kw["atom_dim"] == ATOM_DIM and kw["composition_dim"] == 420
    ys = [r.target for r in dm.sets["train"]]
    assert kw["target_mean"] == pytest.approx(float(np.mean(ys)))
    batch = next(iter(dm.train_dataloader()))
    n_prot = batch.residues.shape[0]
    assert n_prot == len(set(batch.protein_of.tolist())) <= len(SEQS)  # proteins deduplicated
    lengths = batch.protein_mask.sum(1)
    assert batch.residues.shape[1] == int(lengths.max())  # padded to the batch maximum only
    assert batch.atom_x.shape[1] == int(batch.atom_mask.sum(1).max())
    # padding atoms carry no features and no bonds
    assert batch.atom_x[~batch.atom_mask].abs().sum() == 0
    assert batch.atom_adj.sum(2)[~batch.atom_mask].sum() == 0
    # protein edges stay inside their protein's real residues
    src, dst = batch.protein_edges
    flat_mask = batch.protein_mask.flatten()
    assert flat_mask[src].all() and flat_mask[dst].all()
    assert torch.equal(src // batch.residues.shape[1], dst // batch.residues.shape[1])
    assert not batch.has_contacts.any()
    ids = dm.sample_ids()
    assert len(ids) == 26 and ids[0].startswith("train:")


def test_invalid_smiles_one_line_error(tmp_path: Path) -> None:
    rows = pairs(6)
    rows[2] = ("C1CC(", rows[2][1], rows[2][2])  # unclosed ring: unparsable
    write_tsv(tmp_path / "train.tsv", rows)
    write_tsv(tmp_path / "test.tsv", pairs(3))
    with pytest.raises(DataError) as exc:
        AffinityDataModule(str(tmp_path)).setup("fit")
    msg = one_line(exc)
    assert str(tmp_path / "train.tsv") in msg and "line 4" in msg and "SMILES" in msg
    dm = AffinityDataModule(str(tmp_path), skip_invalid=True, val_fraction=0.2)
    dm.setup("fit")
    assert dm.skipped == {str(tmp_path / "train.tsv"): 1}
    assert len(dm.sets["train"]) + len(dm.sets["val"]) == 5


def test_invalid_sequence_and_target(tmp_path: Path) -> None:
    rows = pairs(5)
    rows[1] = (rows[1][0], "MKT1AY", rows[1][2])
    write_tsv(tmp_path / "train.tsv", rows)
    write_tsv(tmp_path / "test.tsv", pairs(3))
    with pytest.raises(DataError) as exc:
        AffinityDataModule(str(tmp_path)).setup("fit")
    msg = one_line(exc)
    assert "line 3" in msg and "'1'" in msg
    rows = pairs(5)
    rows[0] = (rows[0][0], rows[0][1], "high")
    write_tsv(tmp_path / "train.tsv", rows)
    with pytest.raises(DataError, match="line 2: affinity 'high'"):
        AffinityDataModule(str(tmp_path)).setup("fit")


def test_contact_maps_shape_and_hydrogens(tmp_path: Path) -> None:
    seq = "MKTAY"
    np.save(tmp_path / "good.npy", np.eye(5, 3, dtype=np.uint8))
    # explicit-H SMILES of ethanol: 9 atoms as written, 3 heavy at positions 1, 2, 5
    np.save(tmp_path / "hyd.npy", np.arange(5 * 6).reshape(5, 6).astype(np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((5, 4), dtype=np.uint8))
    rows = [("CCO", seq, 5.0, "good.npy"), ("[H]OC([H])([H])C", seq, 6.0, "hyd.npy")]
    write_tsv(tmp_path / "all.tsv", rows, ("contacts",))
    dm = AffinityDataModule(str(tmp_path / "all.tsv"), split="all", batch_size=4)
    dm.setup("fit")
    recs = dm.sets["train"]
    assert recs[0].contacts.shape == (5, 3)
    assert np.array_equal(recs[1].contacts, np.arange(30).reshape(5, 6)[:, [1, 2, 5]])
    batch = next(iter(dm.train_dataloader()))
    assert batch.has_contacts.all() and batch.contacts.shape == (2, 5, 3)

    write_tsv(tmp_path / "bad.tsv", [*rows, ("CCO", seq, 5.0, "bad.npy")], ("contacts",))
    with pytest.raises(DataError) as exc:
        AffinityDataModule(str(tmp_path / "bad.tsv"), split="all").setup("fit")
    msg = one_line(exc)
    assert "bad.npy" in msg and "line 4" in msg and "(5, 4)" in msg


def test_protein_contacts_from_structure(tmp_path: Path) -> None:
    _write_pdb(tmp_path / "p.pdb", [0.0, 3.8, 7.6, 30.0])
    cmap = ca_contact_map(tmp_path / "p.pdb", None, 4, 8.0)
    want = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]])
    assert np.array_equal(cmap, want)
    write_tsv(
        tmp_path / "s.tsv", [("CCO", "AAAA", 5.0, "p.pdb"), ("CCC", "AAAA", 4.0, "p.pdb")], ("structure",)
    )
    dm = AffinityDataModule(str(tmp_path / "s.tsv"), split="all")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    pairs_ = set(zip(batch.protein_edges[0].tolist(), batch.protein_edges[1].tolist(), strict=True))
    assert (0, 2) in pairs_ and (0, 3) not in pairs_ and (3, 3) in pairs_
    write_tsv(tmp_path / "w.tsv", [("CCO", "AAAAA", 5.0, "p.pdb")], ("structure",))
    with pytest.raises(DataError) as exc:
        AffinityDataModule(str(tmp_path / "w.tsv"), split="all").setup("fit")
    assert "4 C-alpha residues, sequence has 5" in one_line(exc)


@pytest.mark.parametrize("split", ["unseen_protein", "unseen_compound", "random"])
def test_unseen_splits(tmp_path: Path, split: str) -> None:
    write_tsv(tmp_path / "pool.tsv", pairs(60))
    dm = AffinityDataModule(str(tmp_path / "pool.tsv"), split=split, test_fraction=0.3, val_fraction=0.2)
    dm.setup("fit")
    sizes = {k: len(v) for k, v in dm.sets.items()}
    assert sum(sizes.values()) == 60 and min(sizes.values()) > 0
    key = {"unseen_protein": "protein", "unseen_compound": "compound"}.get(split)
    if key:
        train = {getattr(r, key) for r in dm.sets["train"]}
        for name in ("val", "test"):
            assert not train & {getattr(r, key) for r in dm.sets[name]}
        batch = next(iter(dm.test_dataloader()[0]))
        assert getattr(batch, f"unseen_{key}").all()


def test_pdbbind_contacts_real(shared_data: Path) -> None:
    path = shared_data / "affinity" / "pdbbind_contacts" / "complexes.json"
    with pytest.raises(DataError) as exc:  # two structure-derived SMILES fail RDKit's valence check
        AffinityDataModule(str(path), split="all").setup("fit")
    assert "complex " in one_line(exc)
    dm = AffinityDataModule(str(path), split="all", lenient_sanitize=True, batch_size=4)
    dm.setup("fit")
    recs = dm.sets["train"]
    assert len(recs) == len(json.loads(path.read_text())) == 14
    for r in recs:
        assert r.contacts.shape == (
            len(dm._proteins[r.protein].residues),
            dm._compounds[r.compound].graph.n_atoms,
        )
        assert r.contacts.sum() > 0
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch.has_contacts.all()
