"""Protein data: gemmi reader edge cases, FASTA/labels/SCOP2, graph edges, cache, views, data module."""

from __future__ import annotations

import bz2
import csv
import gzip
import random
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from _protein_files import atom, helix, plain, write_pdb
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.protein.datamodule import ProteinDataModule
from plexlab.datamodules.protein.formats import fill_blank_elements, infer_element, structure_format
from plexlab.datamodules.protein.graph import (
    RESIDUE_TYPES,
    GraphCache,
    GraphSettings,
    build_edges,
    file_digest,
)
from plexlab.datamodules.protein.labels import read_labels
from plexlab.datamodules.protein.reader import Scop2Index, read_fasta, read_structure
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


# ------------------------------------------------------------------ structure files from the wild (issue 21)


def charmm_line(serial, name, resn, resi, xyz, segment="PROA", het=False):
    """A CHARMM/NAMD-style record: blank chain id and element columns, atom name left-aligned, segment id."""
    rec = "HETATM" if het else "ATOM  "
    x, y, z = xyz
    coords = f"{x:8.3f}{y:8.3f}{z:8.3f}"
    return f"{rec}{serial:5d} {name:<4s} {resn:<4s} {resi:4d}    {coords}  1.00  0.00      {segment}"


def write_charmm(path: Path, n: int, ions: int = 0) -> Path:
    lines = []
    for i in range(n):
        x, y, z = helix(i)
        lines.append(charmm_line(2 * i + 1, "N", "ALA", i + 1, (x + 1, y, z)))
        lines.append(charmm_line(2 * i + 2, "CA", "ALA", i + 1, (x, y, z)))
    for k in range(ions):
        lines.append(charmm_line(1000 + k, "CA", "CA", k + 1, (20.0 + 4 * k, 0.0, 0.0), "IONS", het=True))
    path.write_text("\n".join([*lines, "END"]) + "\n")
    return path


def test_charmm_file_with_blank_elements_reads_every_residue(tmp_path):
    f = write_charmm(tmp_path / "md.pdb", 30, ions=2)
    assert f.read_text().splitlines()[1][12:16] == "CA  "  # left-aligned, as the files
    recs, skips = read_structure(f)  # before: calcium everywhere, "no C-alpha"
    assert [(r.chain, len(r.ca)) for r in recs] == [("PROA", 30)]
    assert recs[0].sequence == "A" * 30 and not [s for s in skips if s.chain == "PROA"]
    import gemmi

    st = gemmi.read_pdb_string(fill_blank_elements(f.read_text()))
    elements = {(r.name, a.name): a.element.name for ch in st[0] for r in ch for a in r}
    assert elements == {("ALA", "N"): "N", ("ALA", "CA"): "C", ("CA", "CA"): "Ca"}


@pytest.mark.parametrize(
    ("residue", "atom_name", "element"),
    [
        ("ALA", "CA  ", "C"),
        ("CA", "CA  ", "CA"),  # the calcium ion keeps its element
        ("MSE", "SE  ", "SE"),
        ("ALA", "1HB ", "H"),
        ("DA", "C1' ", "C"),
        ("ZN", "ZN  ", "ZN"),
        ("HOH", " OH2", None),  # not a polymer residue and not an ion named like itself: gemmi's own guess
        ("LIG", "CL1 ", None),
    ],
)
def test_infer_element(residue, atom_name, element):
    assert infer_element(residue, atom_name) == element


def _kinds_of_non_structure(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = write_pdb(tmp_path / "good.pdb", plain(20)).read_bytes()
    zipped = tmp_path / "zipped.pdb"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("good.pdb", good)
    files = {
        "zip": (zipped, "looks like a zip archive"),
        "bzip2": (tmp_path / "b.pdb.gz", "looks like bzip2-compressed data"),
        "utf16": (tmp_path / "u.pdb", "looks like UTF-16 text"),
        "utf16_no_bom": (tmp_path / "u2.pdb", "looks like UTF-16 text"),
        "dtd": (tmp_path / "pdbx.ent", "looks like an XML DTD"),
        "gro": (tmp_path / "conf.pdb", "looks like a GROMACS .gro file"),
        "html": (tmp_path / "page.cif", "looks like an HTML page"),
        "random": (tmp_path / "noise.pdb", "looks like binary data"),
        "text": (tmp_path / "notes.cif", "no PDB records or mmCIF data block"),
    }
    files["bzip2"][0].write_bytes(bz2.compress(good))
    files["utf16"][0].write_bytes(good.decode().encode("utf-16"))
    files["utf16_no_bom"][0].write_bytes(good.decode().encode("utf-16-le"))
    files["dtd"][0].write_text('<?xml version="1.0"?>\n<!ELEMENT datablock (atom_siteCategory)>\n')
    files["gro"][0].write_text(
        "Protein in water\n    2\n    1ALA     CA    1   1.000   2.000   3.000\n"
        "    2ALA     CA    2   1.380   2.000   3.000\n   5.0   5.0   5.0\n"
    )
    files["html"][0].write_text("<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n")
    files["random"][0].write_bytes(random.Random(0).randbytes(4096) + b"\x00")
    files["text"][0].write_text("these are my notes\nabout the protein\n")
    return files


def test_files_that_are_not_structures_say_what_they_look_like(tmp_path):
    for kind, (f, expected) in _kinds_of_non_structure(tmp_path).items():
        with pytest.raises(DataError) as exc:
            read_structure(f)  # before: "no atoms (empty or truncated structure)" or a gemmi parse error
        msg = str(exc.value)
        assert msg.startswith(f"{f}: not a PDB or mmCIF file (") and expected in msg, (kind, msg)
        assert "\n" not in msg


def test_format_comes_from_content_and_is_in_the_cache_key(tmp_path):
    text = write_pdb(tmp_path / "a.pdb", plain(20)).read_text()
    as_cif = tmp_path / "really_pdb.cif"
    as_cif.write_text(text)
    gz_no_suffix = tmp_path / "gzipped.pdb"
    gz_no_suffix.write_bytes(gzip.compress(text.encode()))
    plain_gz = tmp_path / "plain.pdb.gz"
    plain_gz.write_text(text)
    assert structure_format(as_cif) == "pdb" and structure_format(gz_no_suffix) == "pdb"
    cache = GraphCache(tmp_path / "cache", GraphSettings())
    for f in (as_cif, gz_no_suffix, plain_gz):  # fresh cache: each loads from its content
        (g,), _ = GraphCache(tmp_path / f"fresh_{f.name}", GraphSettings()).load(f)
        assert g["x"].shape == (20,)
    cache.load(as_cif)
    again = GraphCache(tmp_path / "cache", GraphSettings())
    again.load(tmp_path / "a.pdb")  # the same bytes under another name: a hit
    assert (again.hits, again.misses) == (1, 0)
    digest = file_digest(as_cif)
    assert cache.path_for(as_cif).stem == cache._key(digest, "pdb") != cache._key(digest, "mmcif")


def test_minimal_mmcif_without_alt_id_and_element_columns(tmp_path):
    cols = "group_PDB id label_atom_id label_comp_id label_asym_id label_seq_id Cartn_x Cartn_y Cartn_z"
    rows = [
        f"ATOM {i} CA ALA A {i} {x:.3f} {y:.3f} {z:.3f}"
        for i, (x, y, z) in enumerate(map(helix, range(25)), 1)
    ]
    f = tmp_path / "minimal.cif"
    f.write_text(
        "data_x\nloop_\n" + "".join(f"_atom_site.{c}\n" for c in cols.split()) + "\n".join(rows) + "\n"
    )
    (rec,), _ = read_structure(f)  # before: gemmi read no atoms without label_alt_id
    assert len(rec.ca) == 25 and rec.ca[3].tolist() == pytest.approx(list(helix(3)), abs=1e-3)


def _waters(path: Path, n: int = 12) -> Path:
    lines = [atom(i + 1, " O", "HOH", "W", i + 1, helix(i), het=True, elem="O") for i in range(n)]
    path.write_text("\n".join([*lines, "END"]) + "\n")
    return path


def _dna(path: Path, n: int = 12) -> Path:
    lines = [atom(i + 1, " P", "DA", "B", i + 1, helix(i), elem="P") for i in range(n)]
    path.write_text("\n".join([*lines, "END"]) + "\n")
    return path


def test_files_without_a_protein_chain_are_listed_with_why(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    write_pdb(folder / "good.pdb", plain(20))
    _waters(folder / "waters.pdb")
    _dna(folder / "dna.pdb")
    dm = ProteinDataModule(path=str(folder), cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    assert dict(dm.skip_table()) == {"no protein chain": 2, "nucleic acid": 1}
    files = {s.source: s.detail for s in dm.skipped if s.reason == "no protein chain"}
    assert files == {
        "waters.pdb": "only waters, ligands or ions (12 HOH)",
        "dna.pdb": "chains rejected: B nucleic acid",
    }
    (folder / "good.pdb").unlink()
    with pytest.raises(DataError) as exc:
        ProteinDataModule(path=str(folder), cache_dir=str(tmp_path / "c")).setup("fit")
    msg = str(exc.value)  # before: "no usable protein chain (0 rejected)" for a waters-only folder
    assert msg.startswith(
        f"{folder}: no usable protein chain (3 rejected: 2 no protein chain, 1 nucleic acid"
    )
    assert "\n" not in msg


def test_chains_file_naming_a_missing_file(tmp_path):
    write_pdb(tmp_path / "a.pdb", plain(20))
    tsv = tmp_path / "chains.tsv"
    tsv.write_text("file\tchain\na.pdb\tA\nmissing.pdb\tB\n")
    with pytest.raises(DataError) as exc:  # before: FileNotFoundError with a traceback
        ProteinDataModule(chains_file=str(tsv), cache_dir=str(tmp_path / "c")).setup("fit")
    assert str(exc.value) == (
        f"{tsv}: row 3: file 'missing.pdb' not found (looked for {tmp_path / 'missing.pdb'})"
    )


def test_long_chain_graph_is_built_on_the_window(tmp_path):
    seqres = [random.Random(i).choice(["ALA", "GLY", "TRP", "LYS"]) for i in range(200)]
    f = write_pdb(tmp_path / "long.pdb", [(seqres[i], i + 1, " ", False, " ") for i in range(200)], seqres)
    write_pdb(tmp_path / "short.pdb", plain(40), chain="B")
    s = GraphSettings(max_residues=60)
    (long_graph,), _ = GraphCache(tmp_path / "c0", s).load(f)
    assert long_graph["x"].shape == (200,) and long_graph["edge_index"].shape == (2, 0)  # nodes only
    dm = ProteinDataModule(  # two entries: all for training (no held-out splits)
        path=str(tmp_path),
        cache_dir=str(tmp_path / "c"),
        max_residues=60,
        views=["identity"],
        val_fraction=0.0,
        test_fraction=0.0,
    )
    dm.setup("fit")
    i = dm.sample_ids().index("long.pdb:A")
    first = dm.view(i)
    assert first.sequence == dm.items[i]["sequence"][:60] and first.graph.num_nodes == 60
    got = {
        (int(a), int(b), int(t))
        for (a, b), t in zip(first.graph.edge_index.T.tolist(), first.graph.edge_type.tolist(), strict=True)
    }
    assert got == brute_force_edges(first.graph.pos.double(), first.graph.residue_pos.tolist(), s)
    starts = {dm.items[i]["sequence"].find(dm.view(i, random.Random(k)).sequence) for k in range(8)}
    assert len(starts) > 1  # training draws other windows
    short = dm.view(dm.sample_ids().index("short.pdb:B"))  # short chains keep their cached whole graph
    assert short.graph.num_nodes == 40 and short.graph.edge_index.shape[1] > 0
    for batch in dm.train_dataloader():
        assert torch.bincount(batch.a.graph.batch).le(60).all() and batch.a.tokens.shape[1] <= 62


def test_pool_featurizes_like_one_process(tmp_path, capfd):
    folder = tmp_path / "s"
    folder.mkdir()
    for k in range(5):
        write_pdb(folder / f"p{k}.pdb", plain(15 + 7 * k), chain="ABCDE"[k])
    (folder / "broken.pdb").write_bytes(b"PK\x03\x04" + bytes(100))
    serial = ProteinDataModule(path=str(folder), cache_dir=str(tmp_path / "c1"), featurize_workers=1)
    pooled = ProteinDataModule(path=str(folder), cache_dir=str(tmp_path / "c2"), featurize_workers=2)
    serial.setup("fit")
    capfd.readouterr()
    pooled.setup("fit")
    err = capfd.readouterr().err
    assert "protein structures" not in err and "file/s" not in err, err  # no bar: stderr is not a terminal
    assert pooled.sample_ids() == serial.sample_ids() and len(pooled.items) == 5
    for a, b in zip(serial.items, pooled.items, strict=True):
        assert torch.equal(a["edge_index"], b["edge_index"]) and torch.equal(a["pos"], b["pos"])
    assert [str(s) for s in pooled.skipped] == [str(s) for s in serial.skipped]
    assert "zip archive" in pooled.skipped[0].detail
    names = sorted(p.name for p in (tmp_path / "c2").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "c1").iterdir()) and len(names) == 5  # no .tmp left
    assert pooled.cache.misses == serial.cache.misses == 5  # the zip is refused before any cache lookup
    with pytest.raises(DataError, match="featurize_workers"):
        ProteinDataModule(path=str(folder), featurize_workers=0)


def test_folder_from_the_wild_trains_through_plexlab_fit(workdir):
    """What a user runs: `plexlab fit` (MLflow on) on a folder mixing an MD file with blank elements, a chain
    longer than max_residues, files without protein and a zip renamed .pdb; featurized by a pool of 2."""
    import yaml
    from mlflow.tracking import MlflowClient
    from plexlab import cli

    folder = workdir / "structures"
    folder.mkdir()
    write_charmm(folder / "md_system.pdb", 40, ions=3)
    long = [(random.Random(i).choice(["ALA", "LYS", "GLU"]), i + 1, " ", False, " ") for i in range(300)]
    write_pdb(folder / "1lng.pdb", long)
    for k in range(3):
        write_pdb(folder / f"{k + 2}abc.pdb", plain(25 + 5 * k), chain="A")
    _waters(folder / "solvent.pdb")
    (folder / "archive.pdb").write_bytes(b"PK\x03\x04" + bytes(64))
    model = {"name": "protein_mmcl", "esm_layers": 1, "esm_dim": 16, "esm_heads": 2, "gnn_dims": [8]}
    exp = {
        "name": "wild-structures",
        "seed": 0,
        "model": {**model, "proj_dim": 8},
        "data": {
            "name": "protein",
            "path": str(folder),
            "cache_dir": str(workdir / "graph_cache"),
            "max_residues": 100,
            "crop_length": 20,
            "batch_size": 2,
            "featurize_workers": 2,
        },
        "trainer": {"max_epochs": 1, "accelerator": "cpu"},
    }
    (workdir / "exp.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    assert cli.main(["fit", str(workdir / "exp.yaml")]) == 0
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.data.params["data.featurize_workers"] == "2"
    assert "train/loss" in run.data.metrics
    assert len(list((workdir / "graph_cache").glob("*.pt"))) == 6  # all but the zip, which is not cached
