"""Protein data: gemmi reader edge cases, FASTA/labels/SCOP2, graph edges, cache, views, data module."""

from __future__ import annotations

import csv
import gzip
import random
import shutil
from pathlib import Path

import pytest
import torch
from _protein_files import atom, helix, plain, write_pdb
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.protein.datamodule import ProteinDataModule
from plexlab.datamodules.protein.graph import RESIDUE_TYPES, GraphCache, GraphSettings, build_edges
from plexlab.datamodules.protein.reader import Scop2Index, read_fasta, read_labels, read_structure
from plexlab.datamodules.protein.views import ProteinView, ViewSampler, crop_view

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ reader


def test_altloc_insertion_code_and_modified_residue(tmp_path):
    res = plain(12)
    res[3] = ("ALA", 4, " ", False, "AB")  # two conformers: keep the first
    res.insert(6, ("GLY", 6, "A", False, " "))  # insertion code 6A is its own residue
    res[9] = ("MSE", res[9][1], " ", True, " ")  # HETATM selenomethionine in the chain -> M
    f = write_pdb(tmp_path / "x.pdb", res)
    recs, skips = read_structure(f)
    assert not skips and len(recs) == 1
    r = recs[0]
    assert len(r.ca) == 13
    assert r.sequence == "AAAAAAGAAMAAA"
    assert r.ca[3].tolist() == pytest.approx(list(helix(3)), abs=1e-3)  # conformer A, not B (shifted 3 A)


def test_missing_residues_aligned_to_seqres(tmp_path):
    seqres = ["ALA"] * 5 + ["GLY", "TRP"] + ["LYS"] * 5
    res = [("ALA", i + 1, " ", False, " ") for i in range(5)] + [
        ("LYS", 8 + i, " ", False, " ") for i in range(5)
    ]
    f = write_pdb(tmp_path / "gap.pdb", res, seqres=seqres)
    (r,), _ = read_structure(f, min_residues=5)
    assert r.sequence == "AAAAAGWKKKKK"
    assert r.seq_source == "entity"
    assert r.seq_index.tolist() == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11]


def test_nucleic_acid_and_short_chains_skipped_with_reason(tmp_path):
    dna = [atom(900 + i, " P", "DA", "B", i + 1, helix(i), elem="P") for i in range(4)]
    dna += [atom(950 + i, " C1'", "DA", "B", i + 1, helix(i)) for i in range(4)]
    f = write_pdb(tmp_path / "na.pdb", plain(15), extra=["TER", *dna])
    recs, skips = read_structure(f)
    assert [r.chain for r in recs] == ["A"]
    assert [(s.chain, s.reason) for s in skips] == [("B", "nucleic acid")]
    recs, skips = read_structure(f, min_residues=20)
    assert recs == [] and skips[0].reason == "too short"


@pytest.mark.parametrize("kind", ["empty", "truncated_gz", "truncated_text", "garbage_cif"])
def test_bad_structure_files_one_line_error(tmp_path, kind):
    good = write_pdb(tmp_path / "good.pdb", plain(20))
    if kind == "empty":
        f = tmp_path / "empty.pdb"
        f.write_text("")
    elif kind == "truncated_gz":
        f = tmp_path / "t.pdb.gz"
        f.write_bytes(gzip.compress(good.read_bytes())[:200])
    elif kind == "truncated_text":
        f = tmp_path / "t.pdb"
        f.write_text(good.read_text()[: good.read_text().index("ATOM     21") + 40])
    else:
        f = tmp_path / "g.cif"
        f.write_text("data_x\nloop_\n_atom_site.id\n'unterminated\n")
    with pytest.raises(DataError) as exc:
        read_structure(f)
    msg = str(exc.value)
    assert msg.startswith(str(f)) and "\n" not in msg


def test_structure_without_calpha(tmp_path):
    lines = [atom(i + 1, " N", "ALA", "A", i + 1, helix(i), elem="N") for i in range(20)]
    f = tmp_path / "noca.pdb"
    f.write_text("\n".join([*lines, "END"]) + "\n")
    recs, skips = read_structure(f)
    assert recs == [] and skips[0].reason == "no C-alpha"
    with pytest.raises(DataError, match=r"noca\.pdb.*no C-alpha") as exc:
        ProteinDataModule(path=str(f), strict=True, cache_dir=str(tmp_path / "c")).setup("fit")
    assert "\n" not in str(exc.value)
    with pytest.raises(DataError, match=r"noca\.pdb.*no usable protein chain.*no C-alpha"):
        ProteinDataModule(path=str(f), cache_dir=str(tmp_path / "c")).setup("fit")


def test_fasta_and_labels(tmp_path):
    f = tmp_path / "s.fasta"
    f.write_text(">p1 desc\nMKTA\nYIAK\n>p2\nGGX*\n")
    recs = read_fasta(f)
    assert [(r.id, r.sequence) for r in recs] == [("p1", "MKTAYIAK"), ("p2", "GGX")]
    bad = tmp_path / "bad.fasta"
    bad.write_text(">ok\nMKT\n>p9\nMKJT\n")
    with pytest.raises(DataError, match=r"bad\.fasta: record 'p9': residue 'J' at position 3"):
        read_fasta(bad)
    empty = tmp_path / "empty.fasta"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.fasta: no FASTA records"):
        read_fasta(empty)
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("pdb\tchain\tec\tfamily\n1abc\tA\t1.1.1.1,2.7.-.-\tF1\n")
    table, keying = read_labels(tsv)
    assert keying == "pdb" and table[("1ABC", "A")]["ec"] == ["1.1.1.1", "2.7.-.-"]


def test_scop2_labels(shared_data):
    idx = Scop2Index(shared_data / "proteins" / "scop2")
    assert idx.family("1dix", "A") == ["4001977"] and idx.superfamily("1DIX", "A") == ["3000632"]
    assert idx.superfamily("4ZXB", "E") == ["3000398", "3001010"]  # two domains, two labels
    assert idx.family("9XYZ", "A") == []


# ------------------------------------------------------------------ graph


def brute_force_edges(pos, seq, s: GraphSettings):
    n = len(pos)
    edges = set()
    for i in range(n):
        for j in range(n):
            d = seq[j] - seq[i]
            if -s.max_offset <= d <= s.max_offset:
                edges.add((j, i, d + s.max_offset))
            dist = float(((pos[i] - pos[j]) ** 2).sum().sqrt())
            if i != j and abs(d) >= s.min_seq_sep and dist < s.radius:
                edges.add((j, i, 2 * s.max_offset + 1))
        others = sorted((float(((pos[i] - pos[j]) ** 2).sum().sqrt()), j) for j in range(n) if j != i)
        for _, j in others[: s.knn]:
            if abs(seq[j] - seq[i]) >= s.min_seq_sep:
                edges.add((j, i, 2 * s.max_offset + 2))
    return edges


def test_graph_edges_match_brute_force():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(40, 3, generator=g) * 20
    seq = torch.tensor(sorted(random.Random(0).sample(range(60), 40)))  # gaps: offsets follow the sequence
    s = GraphSettings()
    ei, et = build_edges(pos, seq, s)
    got = {(int(a), int(b), int(t)) for (a, b), t in zip(ei.T.tolist(), et.tolist(), strict=True)}
    assert len(got) == ei.shape[1]  # no duplicate edges within a relation
    assert got == brute_force_edges(pos.double(), seq.tolist(), s)
    assert s.num_relations == 7 and set(et.tolist()) <= set(range(7))


def test_cache_hit_and_corruption(tmp_path, caplog):
    f = write_pdb(tmp_path / "c.pdb", plain(30))
    cache = GraphCache(tmp_path / "cache", GraphSettings())
    g1, _ = cache.load(f)
    assert (cache.hits, cache.misses) == (0, 1)
    entries = list((tmp_path / "cache").glob("*.pt"))
    assert len(entries) == 1 and not list((tmp_path / "cache").glob(".tmp-*"))
    g2, _ = GraphCache(tmp_path / "cache", GraphSettings()).load(f)
    cache2 = GraphCache(tmp_path / "cache", GraphSettings())
    g2, _ = cache2.load(f)
    assert (cache2.hits, cache2.misses) == (1, 0)
    assert torch.equal(g1[0]["edge_index"], g2[0]["edge_index"])
    # other settings: another key, a miss
    other = GraphCache(tmp_path / "cache", GraphSettings(radius=6.0))
    other.load(f)
    assert other.misses == 1
    # corrupt the entry: detected, rebuilt, and rewritten whole
    data = entries[0].read_bytes()
    entries[0].write_bytes(data[: len(data) // 2])
    cache3 = GraphCache(tmp_path / "cache", GraphSettings())
    g3, _ = cache3.load(f)
    assert cache3.rebuilt == 1 and cache3.misses == 1
    assert torch.equal(g3[0]["edge_index"], g1[0]["edge_index"])
    cache4 = GraphCache(tmp_path / "cache", GraphSettings())
    cache4.load(f)
    assert cache4.hits == 1
    entries[0].write_bytes(b"not a torch file")
    cache5 = GraphCache(tmp_path / "cache", GraphSettings())
    assert cache5.load(f)[0][0]["x"].shape == (30,) and cache5.rebuilt == 1


# ------------------------------------------------------------------ views


def test_crop_keeps_sequence_and_subgraph_aligned(tmp_path):
    seqres = [random.Random(i).choice(["ALA", "GLY", "TRP", "LYS", "ASP"]) for i in range(120)]
    observed = [i for i in range(120) if not 30 <= i < 45]
    res = [(seqres[i], i + 1, " ", False, " ") for i in observed]
    f = write_pdb(tmp_path / "crop.pdb", res, seqres=seqres)
    dm = ProteinDataModule(path=str(f), cache_dir=str(tmp_path / "cache"), crop_length=50)
    dm.setup("fit")
    full = dm.view(0)
    rng = random.Random(0)
    for _ in range(20):
        v = crop_view(full, 50, rng)
        assert len(v.sequence) == 50
        letters = "".join(RESIDUE_TYPES[int(t)] for t in v.graph.x)
        assert letters == "".join(v.sequence[int(p)] for p in v.graph.residue_pos)
        start = full.sequence.find(v.sequence)
        keep = (full.graph.residue_pos >= start) & (full.graph.residue_pos < start + 50)
        assert v.graph.num_nodes == int(keep.sum())
        assert torch.equal(v.graph.pos, full.graph.pos[keep])
        # edges of the crop are exactly the original edges among kept nodes, relabelled
        old = torch.nonzero(keep).flatten()
        orig = {
            (int(a), int(b), int(t))
            for (a, b), t in zip(full.graph.edge_index.T.tolist(), full.graph.edge_type.tolist(), strict=True)
        }
        sub = {
            (int(old[a]), int(old[b]), int(t))
            for (a, b), t in zip(v.graph.edge_index.T.tolist(), v.graph.edge_type.tolist(), strict=True)
        }
        assert sub == {e for e in orig if keep[e[0]] and keep[e[1]]}


def test_family_and_superfamily_partners_share_labels():
    fams = [["F1"], ["F1"], ["F2"], [], ["F2", "F3"], ["F3"]]
    sfams = [["S1"], ["S1"], ["S1"], [], ["S2"], ["S2"]]
    views = {i: ProteinView(str(i), "A" * 10, None) for i in range(6)}
    for spec, labels in (("family", fams), ("superfamily", sfams)):
        sampler = ViewSampler([spec], fams, sfams)
        rng = random.Random(0)
        for anchor in (0, 1, 2, 4, 5):
            for _ in range(10):
                a, b, used = sampler.sample(anchor, views.__getitem__, rng)
                assert used == spec and a.id == str(anchor) and b.id != a.id
                assert set(labels[anchor]) & set(labels[int(b.id)])
        a, b, _ = sampler.sample(3, views.__getitem__, rng)  # unlabelled: falls back to itself
        assert b.id == a.id == "3" and sampler.fallbacks == 1
    with pytest.raises(ValueError, match="unknown view part"):
        ViewSampler(["family+rotate"], fams, sfams)


# ------------------------------------------------------------------ real data


@pytest.fixture(scope="session")
def shared_dm(shared_data, tmp_path_factory):
    """All 70 shared structure files featurized once per session into a private cache."""
    p = shared_data / "proteins"
    dm = ProteinDataModule(
        chains_file=str(p / "chains.tsv"),
        scop2_dir=str(p / "scop2"),
        cache_dir=str(tmp_path_factory.mktemp("protein_cache")),
        views=["family+crop", "superfamily"],
        batch_size=4,
    )
    dm.setup("fit")
    return dm


def test_shared_structures_every_chain_used_or_rejected(shared_dm, shared_data):
    rows = list(csv.DictReader(open(shared_data / "proteins" / "chains.tsv"), delimiter="\t"))
    used = {tuple(i.split(":", 1)) for i in shared_dm.sample_ids()}
    rejected = {(s.source, s.chain): s for s in shared_dm.skipped}
    for row in rows:
        key = (Path(row["file"]).name, row["chain"])
        assert key in used or key in rejected, key
    assert len(used) + len(rejected) == len(rows) == 276
    # the only rejections: CHARMM files whose blank chain id is split into segments PROA/PROB
    assert dict(shared_dm.skip_table()) == {"chain not found": 3}
    assert all("PROA" in s.detail for s in shared_dm.skipped)
    # a second data module on the same cache reads every file from it
    dm2 = ProteinDataModule(chains_file=shared_dm.chains_file, cache_dir=shared_dm.cache_dir)
    dm2.setup("fit")
    assert dm2.cache.hits == 70 and dm2.cache.misses == 0
    assert dm2.sample_ids() == shared_dm.sample_ids()


def test_shared_folder_skips_nucleic_acids(shared_data, shared_dm, tmp_path):
    dm = ProteinDataModule(path=str(shared_data / "proteins" / "structures"), cache_dir=shared_dm.cache_dir)
    dm.setup("fit")
    assert dict(dm.skip_table()) == {"nucleic acid": 13, "too short": 1}
    assert len(dm.items) == 279 and dm.cache.hits == 70


def test_shared_batches_and_family_views(shared_dm):
    fam_items = [i for i, it in enumerate(shared_dm.items) if it["family"]]
    assert len(fam_items) >= 8
    rng = random.Random(1)
    for i in fam_items:
        a, b, spec = shared_dm.sampler.sample(i, shared_dm.view, rng)
        if spec == "family+crop" and b.id != a.id:
            j = shared_dm.sample_ids().index(b.id)
            assert set(shared_dm.items[i]["family"]) & set(shared_dm.items[j]["family"])
            assert len(a.sequence) <= 50
    batch = next(iter(shared_dm.train_dataloader()))
    assert batch.a.tokens.shape[0] == 4 and batch.a.graph.num_graphs == 4
    n_res = (batch.a.tokens > 3).sum(1)  # residue tokens (alphabet ids 0-3 are special)
    assert (batch.a.graph.residue_pos + 1 < batch.a.tokens.shape[1]).all()
    assert torch.bincount(batch.a.graph.batch).le(n_res).all()
    pred = next(iter(shared_dm.predict_dataloader()))
    assert pred.ids == shared_dm.sample_ids()[:4]


def test_function_mode_labels(shared_data, shared_dm):
    p = shared_data / "proteins"
    dm = ProteinDataModule(
        path=str(p / "structures"),
        labels_file=str(p / "chains.tsv"),
        cache_dir=shared_dm.cache_dir,
        mode="function",
    )
    dm.setup("fit")
    assert len(dm.items) == 6 and dm.model_kwargs()["num_labels"] == len(dm.label_names) == 6
    batch = next(iter(dm.val_dataloader()))
    assert batch.labels.shape == (len(batch.ids), 6) and batch.labels.sum(1).ge(1).all()


def test_copy_of_file_reads_cache(tmp_path, shared_data, shared_dm):
    src = shared_data / "proteins" / "structures" / "1aki.pdb.gz"
    shutil.copy(src, tmp_path / "renamed.pdb.gz")
    cache = GraphCache(shared_dm.cache_dir, shared_dm.settings)
    graphs, _ = cache.load(tmp_path / "renamed.pdb.gz")
    assert cache.hits == 1 and graphs[0]["id"] == "renamed.pdb.gz:A"
