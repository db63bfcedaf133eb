"""Malformed inputs through the real command line: `plexlab fit` must say what is wrong in one line.

Each case builds a small bad file (or config) in a fresh working directory, writes an experiment file that
points at it, runs `plexlab.cli.main(["fit", ...])` in this process and checks: exit status 2, exactly one
line on stderr that names the file and the record or key, and nothing left in MLflow (no run at all, so none
RUNNING). Two cases also run as real processes (the console script and `python -m plexlab.cli`); a bad sweep
file is refused before Ray starts; an error found after the run started ends the run FAILED.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import yaml
from _affinity_files import pairs, write_ca_pdb, write_tsv
from _anndata_layouts import write_pre07, write_v07
from _bad_input_runs import Built, experiment, run_bad, runs_in_store, single_cell
from _hypergraph_files import write_graph
from _image_text_files import make_dataset
from _perturbation_files import write_perturbation
from _protein_files import atom, helix, plain, write_pdb
from _single_cell_data import make_adata, write_h5ad
from _single_cell_data import write_mudata as _mudata
from plexlab import cli, schema

# ---- tiny models: the data fails before a model is built, but if it ever did not, training stays cheap ----

PROTEIN_MODEL = {
    "name": "protein_mmcl",
    "esm_layers": 1,
    "esm_dim": 16,
    "esm_heads": 2,
    "gnn_dims": [8],
    "proj_dim": 8,
}
SVAE_MODEL = {"name": "svae", "n_latent": 2, "n_hidden": 8, "n_layers": 1}
CPAC_MODEL = {
    "name": "cpac",
    "hidden": 8,
    "joint_dim": 4,
    "chunk_size": 4,
    "gnn_layers": 1,
    "gnn_heads": 1,
    "gcn_layers": 1,
    "head_hidden": 8,
}
MLP_MODEL = {"name": "affinity_mlp", "hidden": [8]}
E2_MODEL = {
    "name": "e2",
    "vision_width": 16,
    "vision_layers": 1,
    "vision_heads": 2,
    "patch_size": 8,
    "text_width": 16,
    "text_layers": 1,
    "text_heads": 2,
    "projection_dim": 8,
}
HYPERGCL_MODEL = {"name": "hypergcl", "hidden": 8}
CASES: dict[str, Callable[[Path], Built]] = {}


def case(fn: Callable[[Path], Built]) -> Callable[[Path], Built]:
    CASES[fn.__name__] = fn
    return fn


# ---- protein structures and sequences --------------------------------------------------------------------


def protein(path: Path, **kw: Any) -> dict[str, Any]:
    data = {"name": "protein", "path": str(path), "cache_dir": str(path.parent / "graph_cache"), **kw}
    return experiment(PROTEIN_MODEL, data)


@case
def pdb_empty(tmp: Path) -> Built:
    f = tmp / "empty.pdb"
    f.write_text("")
    return protein(f, strict=True), [str(f), "empty file"]


@case
def pdb_truncated(tmp: Path) -> Built:
    good = write_pdb(tmp / "good.pdb", plain(20)).read_text()
    f = tmp / "cut.pdb"
    f.write_text(good[: good.index("ATOM     21") + 40])
    return protein(f, strict=True), [str(f), "truncated", "line 21"]


@case
def pdb_gz_truncated_in_folder(tmp: Path) -> Built:
    # Not strict: the file is rejected, and with nothing else left the folder is the error, naming the file.
    folder = tmp / "structures"
    folder.mkdir()
    good = write_pdb(tmp / "good.pdb", plain(20)).read_bytes()
    (folder / "cut.pdb.gz").write_bytes(gzip.compress(good)[:200])
    return protein(folder), [str(folder), "no usable protein chain", "cut.pdb.gz"]


@case
def pdb_gz_empty(tmp: Path) -> Built:
    f = tmp / "empty.pdb.gz"
    f.write_bytes(gzip.compress(b""))
    return protein(f, strict=True), [str(f), "empty file"]


@case
def mmcif_empty(tmp: Path) -> Built:
    f = tmp / "empty.cif"
    f.write_text("\n\n")
    return protein(f, strict=True), [str(f), "empty file"]


@case
def mmcif_garbage(tmp: Path) -> Built:
    f = tmp / "broken.cif"
    f.write_text("data_x\nloop_\n_atom_site.id\n'unterminated\n")
    return protein(f, strict=True), [str(f), "cannot parse"]


@case
def mmcif_gz_truncated(tmp: Path) -> Built:
    lines = ["data_1abc", "loop_", "_atom_site.group_PDB", "_atom_site.id", "_atom_site.type_symbol"]
    lines += ["_atom_site.label_atom_id", "_atom_site.label_comp_id", "_atom_site.label_asym_id"]
    lines += ["_atom_site.label_seq_id", "_atom_site.Cartn_x", "_atom_site.Cartn_y", "_atom_site.Cartn_z"]
    lines += [f"ATOM {i} C CA ALA A {i} {i * 3.8:.3f} 0.000 0.000" for i in range(1, 40)]
    f = tmp / "1abc.cif.gz"
    f.write_bytes(gzip.compress("\n".join(lines).encode())[:150])
    return protein(f, strict=True), [str(f), "cannot read"]


@case
def structure_without_calpha(tmp: Path) -> Built:
    f = tmp / "noca.pdb"
    lines = [atom(i + 1, " N", "ALA", "A", i + 1, helix(i), elem="N") for i in range(20)]
    f.write_text("\n".join([*lines, "END"]) + "\n")
    # Chain rejections name the file by its base name (a folder holds many files; the name is unique there).
    return protein(f, strict=True), ["noca.pdb", "chain 'A'", "no C-alpha"]


@case
def fasta_invalid_letter(tmp: Path) -> Built:
    f = tmp / "bad.fasta"
    f.write_text(">ok\nMKTAYIAKQR\n>p9\nMKJTAYIAKQ\n")
    data = {"name": "protein", "fasta_file": str(f), "cache_dir": str(tmp / "c")}
    return experiment(PROTEIN_MODEL, data), [str(f), "record 'p9'", "residue 'J'"]


@case
def fasta_empty(tmp: Path) -> Built:
    f = tmp / "empty.fasta"
    f.write_text("\n")
    data = {"name": "protein", "fasta_file": str(f), "cache_dir": str(tmp / "c")}
    return experiment(PROTEIN_MODEL, data), [str(f), "no FASTA records"]


@case
def protein_views_empty(tmp: Path) -> Built:
    f = write_pdb(tmp / "a.pdb", plain(20))
    return protein(f, views=[]), ["data.views", "at least one view"]


@case
def protein_view_unknown(tmp: Path) -> Built:
    f = write_pdb(tmp / "a.pdb", plain(20))
    return protein(f, views=["rotate"]), ["data.views", "rotate"]


@case
def chains_file_without_columns(tmp: Path) -> Built:
    write_pdb(tmp / "a.pdb", plain(20))
    tsv = tmp / "chains.tsv"
    tsv.write_text("structure\tid\na.pdb\tA\n")
    data = {"name": "protein", "chains_file": str(tsv), "cache_dir": str(tmp / "c")}
    return experiment(PROTEIN_MODEL, data), [str(tsv), "'file' and 'chain'"]


@case
def protein_labels_bad_key(tmp: Path) -> Built:
    f = write_pdb(tmp / "1abc.pdb", plain(20))
    labels = tmp / "labels.tsv"
    labels.write_text("id\tec\n1ABC-A\t1.1.1.1\nnokey\t2.7.1.1\n")
    data = {"name": "protein", "path": str(f), "labels_file": str(labels), "mode": "function"}
    data["cache_dir"] = str(tmp / "c")
    model = {**PROTEIN_MODEL, "name": "protein_function", "head_hidden": 8, "head_layers": 1}
    model.pop("proj_dim")
    return experiment(model, data), [str(labels), "row 3", "'nokey'"]


# ---- single-cell AnnData / MuData ------------------------------------------------------------------------


@case
def h5ad_missing_layer(tmp: Path) -> Built:
    path = write_h5ad(tmp, make_adata())
    return single_cell(path, layers={"X": "raw_counts"}), [str(path), "layer 'raw_counts'"]


@case
def h5ad_nan_counts(tmp: Path) -> Built:
    a = make_adata()
    x = a.X.toarray()
    x[7, 3] = np.nan
    a.X = sp.csr_matrix(x)
    path = write_h5ad(tmp, a)
    return single_cell(path), [str(path), "NaN", "cell 'cell7' (row 7)"]


@case
def h5ad_non_integer_counts(tmp: Path) -> Built:
    a = make_adata()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))
    path = write_h5ad(tmp, a)
    return single_cell(path, transforms={"X": "log1p"}), [str(path), "non-integer count"]


@case
def h5ad_missing_obs_key(tmp: Path) -> Built:
    path = write_h5ad(tmp, make_adata())
    return single_cell(path, cell_type_key="celltype"), [str(path), "obs key 'celltype'"]


@case
def h5ad_not_hdf5(tmp: Path) -> Built:
    path = tmp / "junk.h5ad"
    path.write_text("this is not HDF5")
    return single_cell(path), [str(path), "HDF5"]


@case
def mudata_mismatched_cells(tmp: Path) -> Built:
    path = _mudata(tmp, n_adt=30)
    needles = [str(path), "'rna'", "'adt'", "different cells (e.g. 'cell30')"]
    return single_cell(path, modalities=["rna", "adt"]), needles


@case
def mudata_unknown_modality(tmp: Path) -> Built:
    path = _mudata(tmp, n_adt=40)
    return single_cell(path, modalities=["rna", "atac"]), [str(path), "'atac'"]


# ---- perturbations ---------------------------------------------------------------------------------------


@case
def perturbation_negative_count(tmp: Path) -> Built:
    x = np.ones((8, 3), dtype=np.float32)
    x[2, 1] = -1
    path = write_perturbation(tmp, x, name="neg.h5ad")
    data = {"name": "perturbation", "path": str(path), "perturbation_key": "guide"}
    return experiment(SVAE_MODEL, data), [str(path), "negative", "'c2'", "'g1'"]


@case
def perturbation_missing_key(tmp: Path) -> Built:
    path = write_perturbation(tmp, np.ones((8, 3), dtype=np.float32))
    data = {"name": "perturbation", "path": str(path), "perturbation_key": "gene"}
    return experiment(SVAE_MODEL, data), [str(path), "obs key 'gene'"]


@case
def perturbation_no_source(tmp: Path) -> Built:
    return experiment(SVAE_MODEL, {"name": "perturbation"}), ["data: ", "path", "simulate"]


@case
def perturbation_heldout_all(tmp: Path) -> Built:
    path = write_perturbation(tmp, np.ones((8, 3), dtype=np.float32))
    data = {"name": "perturbation", "path": str(path), "perturbation_key": "guide", "n_heldout": 3}
    return experiment(SVAE_MODEL, data), [str(path), "n_heldout=3"]


@case
def perturbation_simulator_sizes(tmp: Path) -> Built:
    data = {"name": "perturbation", "simulate": True, "sim_n_latents": 8, "sim_n_genes": 4}
    return experiment(SVAE_MODEL, data), ["<simulated>", "sim_*", "n_genes"]


# ---- compound-protein affinity ---------------------------------------------------------------------------


def affinity_dir(tmp: Path, rows: list[tuple], extra: tuple[str, ...] = ()) -> Path:
    write_tsv(tmp / "train.tsv", rows, extra)
    write_tsv(tmp / "test.tsv", pairs(3))
    return tmp


@case
def smiles_unparsable(tmp: Path) -> Built:
    rows = pairs(6)
    rows[2] = ("C1CC(", rows[2][1], rows[2][2])
    folder = affinity_dir(tmp, rows)
    cfg = experiment(CPAC_MODEL, {"name": "affinity", "path": str(folder)})
    return cfg, [str(tmp / "train.tsv"), "line 4", "SMILES"]


@case
def protein_sequence_invalid_letter(tmp: Path) -> Built:
    rows = pairs(5)
    rows[1] = (rows[1][0], "MKT1AY", rows[1][2])
    folder = affinity_dir(tmp, rows)
    data = {"name": "affinity", "path": str(folder), "fingerprint_bits": 64}
    return experiment(MLP_MODEL, data), [str(tmp / "train.tsv"), "line 3", "'1'"]


@case
def affinity_not_a_number(tmp: Path) -> Built:
    rows = pairs(5)
    rows[0] = (rows[0][0], rows[0][1], "high")
    folder = affinity_dir(tmp, rows)
    cfg = experiment(CPAC_MODEL, {"name": "affinity", "path": str(folder)})
    return cfg, [str(tmp / "train.tsv"), "line 2", "'high'"]


@case
def affinity_missing_column(tmp: Path) -> Built:
    (tmp / "train.tsv").write_text("compound\tprotein_sequence\tpKd\n" + "CCO\tMKTAY\t5.0\n" * 5)
    write_tsv(tmp / "test.tsv", pairs(3))
    cfg = experiment(CPAC_MODEL, {"name": "affinity", "path": str(tmp)})
    return cfg, [str(tmp / "train.tsv"), "missing column 'smiles'"]


@case
def contact_map_wrong_shape(tmp: Path) -> Built:
    seq = "MKTAY"
    np.save(tmp / "good.npy", np.eye(5, 3, dtype=np.uint8))
    np.save(tmp / "bad.npy", np.zeros((5, 4), dtype=np.uint8))
    rows = [("CCO", seq, 5.0, "good.npy"), ("CCO", seq, 6.0, "good.npy"), ("CCO", seq, 5.5, "bad.npy")]
    tsv = write_tsv(tmp / "all.tsv", rows, ("contacts",))
    cfg = experiment(CPAC_MODEL, {"name": "affinity", "path": str(tsv), "split": "all"})
    return cfg, [f"{tsv}: line 4", str(tmp / "bad.npy"), "(5, 4)"]


@case
def structure_and_sequence_disagree(tmp: Path) -> Built:
    write_ca_pdb(tmp / "p.pdb", [0.0, 3.8, 7.6, 30.0])
    tsv = write_tsv(tmp / "s.tsv", [("CCO", "AAAAA", 5.0, "p.pdb")], ("structure",))
    cfg = experiment(CPAC_MODEL, {"name": "affinity", "path": str(tsv), "split": "all"})
    return cfg, ["p.pdb", "4 C-alpha residues, sequence has 5"]


# ---- hypergraphs -----------------------------------------------------------------------------------------


def hypergraph(tmp: Path, mutate: Callable[[Path], object], **kw: Any) -> dict[str, Any]:
    folder = write_graph(tmp / "graph")
    mutate(folder)
    return experiment(HYPERGCL_MODEL, {"name": "hypergraph", "path": str(folder), **kw})


@case
def hyperedge_out_of_range(tmp: Path) -> Built:
    cfg = hypergraph(tmp, lambda f: (f / "hyperedges.json").write_text('{"hyperedges": [[0, 1], [3, 999]]}'))
    return cfg, [str(tmp / "graph" / "hyperedges.json"), "hyperedge 1", "node 999"]


@case
def hyperedges_not_json(tmp: Path) -> Built:
    cfg = hypergraph(tmp, lambda f: (f / "hyperedges.json").write_text("{not json"))
    return cfg, [str(tmp / "graph" / "hyperedges.json"), "cannot read hyperedges"]


@case
def label_count_mismatch(tmp: Path) -> Built:
    cfg = hypergraph(tmp, lambda f: np.save(f / "labels.npy", np.zeros(5, dtype=np.int64)))
    return cfg, [str(tmp / "graph" / "labels.npy"), "expected 60 labels"]


@case
def labels_not_numpy(tmp: Path) -> Built:
    cfg = hypergraph(tmp, lambda f: (f / "labels.npy").write_bytes(b"not numpy"))
    return cfg, [str(tmp / "graph" / "labels.npy"), "cannot read labels"]


@case
def features_with_nan(tmp: Path) -> Built:
    def poison(folder: Path) -> None:
        x = sp.load_npz(folder / "features.npz").toarray()
        x[4, 1] = np.nan
        sp.save_npz(folder / "features.npz", sp.csr_matrix(x))

    return hypergraph(tmp, poison), [str(tmp / "graph" / "features.npz"), "node 4", "NaN"]


@case
def node_in_two_splits(tmp: Path) -> Built:
    cfg = hypergraph(tmp, lambda f: (f / "splits.json").write_text('[{"train": [1, 2], "test": [2, 3]}]'))
    return cfg, [str(tmp / "graph" / "splits.json"), "node 2 is in both"]


@case
def split_index_missing(tmp: Path) -> Built:
    cfg = hypergraph(tmp, lambda f: None, split=5)
    return cfg, [str(tmp / "graph" / "splits.json"), "split 5 does not exist"]


# ---- image-text ------------------------------------------------------------------------------------------


def image_text(root: Path, **kw: Any) -> dict[str, Any]:
    data = {"name": "image_text", "path": str(root), "image_size": 16, "max_text_length": 12}
    return experiment(E2_MODEL, {**data, "val_fraction": 0.25, "test_fraction": 0.25, **kw})


@case
def image_that_is_not_an_image(tmp: Path) -> Built:
    root = make_dataset(tmp / "flickr", n_images=8)
    (root / "images" / "img03.png").write_text("this is not an image")
    return image_text(root), [str(root / "images" / "img03.png"), "not a readable image"]


@case
def image_missing(tmp: Path) -> Built:
    root = make_dataset(tmp / "flickr", n_images=8)
    (root / "images" / "img05.png").unlink()
    return image_text(root), [str(root / "captions.csv"), "row 11", "img05.png"]


@case
def captions_without_caption_column(tmp: Path) -> Built:
    root = make_dataset(tmp / "flickr", n_images=8)
    (root / "bad.csv").write_text("image,text\nimg00.png,a red square\n")
    return image_text(root, captions_file=str(root / "bad.csv")), [str(root / "bad.csv"), "'caption'"]


# ---- experiment files ------------------------------------------------------------------------------------


def good_hypergraph(tmp: Path, **extra: Any) -> dict[str, Any]:
    folder = write_graph(tmp / "graph")
    return experiment(HYPERGCL_MODEL, {"name": "hypergraph", "path": str(folder)}, **extra)


@case
def config_unknown_top_level_key(tmp: Path) -> Built:
    return good_hypergraph(tmp, epochs=3), ["exp.yaml", "epochs", "unknown key"]


@case
def config_unknown_model_key(tmp: Path) -> Built:
    cfg = good_hypergraph(tmp)
    cfg["model"]["hiddn"] = 8
    return cfg, ["exp.yaml", "model.hiddn", "unknown key for hypergcl"]


@case
def config_wrong_type(tmp: Path) -> Built:
    cfg = good_hypergraph(tmp)
    cfg["model"]["hidden"] = "big"
    return cfg, ["exp.yaml", "model.hidden", "'big'"]


@case
def config_wrong_trainer_type(tmp: Path) -> Built:
    cfg = good_hypergraph(tmp)
    cfg["trainer"]["max_epochs"] = "ten"
    return cfg, ["exp.yaml", "trainer.max_epochs", "'ten'"]


@case
def config_unknown_model_name(tmp: Path) -> Built:
    cfg = good_hypergraph(tmp)
    cfg["model"]["name"] = "hypergcn"
    return cfg, ["exp.yaml", "model.name", "'hypergcn'"]


@case
def config_data_path_missing(tmp: Path) -> Built:
    cfg = good_hypergraph(tmp)
    cfg["data"]["path"] = str(tmp / "nowhere")
    return cfg, ["exp.yaml", "data.path", "nowhere"]


@case
def config_model_size_disagrees_with_data(tmp: Path) -> Built:
    cfg = good_hypergraph(tmp)
    cfg["model"]["in_dim"] = 7
    return cfg, ["exp.yaml", "model.in_dim", "7", "3"]


@case
def search_space_low_above_high(tmp: Path) -> Built:
    sweep = {"space": {"model.lr": {"loguniform": [1.0e-2, 1.0e-4]}}}
    return good_hypergraph(tmp, sweep=sweep), ["exp.yaml", "sweep.space.model.lr", "below"]


@case
def search_space_unknown_distribution(tmp: Path) -> Built:
    sweep = {"space": {"model.hidden": {"normal": [8, 16]}}}
    return good_hypergraph(tmp, sweep=sweep), ["exp.yaml", "sweep.space.model.hidden", "choice"]


@case
def yaml_syntax_error(tmp: Path) -> Built:
    return "name: x\nmodel: {name: hypergcl\n", ["exp.yaml", "not valid YAML"]


@case
def yaml_not_a_mapping(tmp: Path) -> Built:
    return "- just\n- a list\n", ["exp.yaml", "mapping"]


@case
def override_unknown_key(tmp: Path) -> Built:
    return good_hypergraph(tmp), ["exp.yaml", "model.hiden"], ["--set", "model.hiden=8"]


@case
def override_without_value(tmp: Path) -> Built:
    return good_hypergraph(tmp), ["--set", "model.lr"], ["--set", "model.lr"]


# ---- protein structure files from the wild (issue 21): not structures, no protein, missing files ---------
# Each is read the way users run it (not strict): the file is rejected, and with nothing else left the
# error names the file, why it was rejected, and (for a folder) the folder.


def _good_pdb_bytes(tmp: Path) -> bytes:
    return write_pdb(tmp / "good_source.pdb", plain(20)).read_bytes()


@case
def pdb_zip_renamed(tmp: Path) -> Built:
    import zipfile

    f = tmp / "archive.pdb"
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr("1abc.pdb", _good_pdb_bytes(tmp))
    return protein(f), [str(f), "not a PDB or mmCIF file", "zip archive"]


@case
def pdb_utf16_text(tmp: Path) -> Built:
    f = tmp / "windows.pdb"
    f.write_bytes(_good_pdb_bytes(tmp).decode().encode("utf-16"))
    return protein(f), [str(f), "not a PDB or mmCIF file", "UTF-16"]


@case
def pdb_bzip2_in_folder(tmp: Path) -> Built:
    import bz2

    folder = tmp / "structures"
    folder.mkdir()
    (folder / "1abc.pdb.gz").write_bytes(bz2.compress(_good_pdb_bytes(tmp)))
    return protein(folder), [str(folder), "1abc.pdb.gz", "not a PDB or mmCIF file", "bzip2"]


@case
def pdb_gromacs_gro(tmp: Path) -> Built:
    f = tmp / "conf.gro"
    rows = [f"{i + 1:5d}ALA     CA{i + 1:5d}{0.38 * i:8.3f}{1.0:8.3f}{1.0:8.3f}" for i in range(20)]
    f.write_text("\n".join(["Protein in water", "   20", *rows, "   5.00000   5.00000   5.00000"]) + "\n")
    return protein(f), [str(f), "not a PDB or mmCIF file", "GROMACS .gro"]


@case
def pdb_ent_xml_dtd(tmp: Path) -> Built:
    f = tmp / "pdbx-v50.ent"
    f.write_text('<?xml version="1.0"?>\n<!ELEMENT PDBx:datablock (PDBx:atom_siteCategory)>\n')
    return protein(f), [str(f), "not a PDB or mmCIF file", "XML DTD"]


@case
def mmcif_random_bytes(tmp: Path) -> Built:
    import random

    f = tmp / "noise.cif"
    f.write_bytes(random.Random(7).randbytes(2048) + b"\x00")
    return protein(f), [str(f), "not a PDB or mmCIF file", "binary data"]


@case
def pdb_waters_only(tmp: Path) -> Built:
    f = tmp / "waters.pdb"
    lines = [atom(i + 1, " O", "HOH", "W", i + 1, helix(i), het=True, elem="O") for i in range(30)]
    f.write_text("\n".join([*lines, "END"]) + "\n")
    return protein(f), [str(f), "no protein chain", "only waters, ligands or ions (30 HOH)"]


@case
def pdb_nucleic_acid_only(tmp: Path) -> Built:
    f = tmp / "dna.pdb"
    lines = [atom(i + 1, " P", "DA", "B", i + 1, helix(i), elem="P") for i in range(12)]
    f.write_text("\n".join([*lines, "END"]) + "\n")
    return protein(f), [str(f), "1 no protein chain", "chain 'B': nucleic acid: Dna chain skipped"]


@case
def pdb_charmm_ions_only(tmp: Path) -> Built:
    # Blank element columns, left-aligned names, segment ids: calcium ions stay calcium, and say so.
    f = tmp / "ions.pdb"
    rows = [
        f"HETATM{i + 1:5d} CA   CA   {i + 1:4d}    {3.0 * i:8.3f}{0.0:8.3f}{0.0:8.3f}  1.00  0.00      IONS"
        for i in range(5)
    ]
    f.write_text("\n".join([*rows, "END"]) + "\n")
    return protein(f), [str(f), "no protein chain", "5 CA"]


@case
def pdb_chains_file_names_missing_file(tmp: Path) -> Built:
    write_pdb(tmp / "a.pdb", plain(20))
    tsv = tmp / "chains.tsv"
    tsv.write_text("file\tchain\na.pdb\tA\nstructures/gone.pdb\tB\n")
    data = {"name": "protein", "chains_file": str(tsv), "cache_dir": str(tmp / "c")}
    return experiment(PROTEIN_MODEL, data), [str(tsv), "row 3", "'structures/gone.pdb' not found"]


@case
def pdb_html_error_page(tmp: Path) -> Built:
    f = tmp / "1abc.pdb"
    f.write_text("<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n")
    return protein(f), [str(f), "not a PDB or mmCIF file", "HTML page"]


# ---- single-cell files from the wild: file kinds, legacy AnnData layouts, counts and layers -------------
# (task E) Each names the file and the key, and where a setting would fix it, the setting.


def _rewrite(path: Path, name: str) -> Path:
    return path.rename(path.with_name(name))


@case
def h5ad_named_h5mu(tmp: Path) -> Built:
    path = _rewrite(write_h5ad(tmp, make_adata()), "cells.h5mu")
    return single_cell(path), [str(path), "an AnnData file", "rename it to .h5ad"]


@case
def mudata_named_h5ad(tmp: Path) -> Built:
    path = _rewrite(_mudata(tmp, n_adt=40), "cite.h5ad")
    return single_cell(path), [str(path), "a MuData file (modalities ['adt', 'rna'])", "rename it to .h5mu"]


@case
def h5ad_truncated(tmp: Path) -> Built:
    path = write_h5ad(tmp, make_adata())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return single_cell(path), [str(path), "truncated HDF5 file"]


@case
def mudata_not_hdf5(tmp: Path) -> Built:
    path = tmp / "cite.h5mu"
    path.write_text("rna,adt\n1,2\n")
    return single_cell(path), [str(path), "not an HDF5 file"]


@case
def mudata_mod_order_names_a_missing_modality(tmp: Path) -> Built:
    path = _mudata(tmp, n_adt=40)
    with h5py.File(path, "a") as f:
        f["mod"].attrs["mod-order"] = np.array(["rna", "atac", "adt"], dtype=object)
    return single_cell(path), [str(path), "mod-order lists 'atac'", "['adt', 'rna']"]


@case
def mudata_missing_layer(tmp: Path) -> Built:
    path = _mudata(tmp, n_adt=40)
    needles = [str(path), "layer 'raw' not found in modality 'rna' (layers: ['counts'])", "data.layers"]
    return single_cell(path, layers={"rna": "raw"}), needles


@case
def h5ad_negative_counts_name_the_setting(tmp: Path) -> Built:
    a = make_adata()
    x = a.X.toarray()
    x[5, 2] = -3
    a.X = sp.csr_matrix(x)
    path = write_h5ad(tmp, a)
    needles = [
        str(path),
        "X: negative count -3 at cell 'cell5' (row 5)",
        "data.counts_required",
        "data.layers",
    ]
    return single_cell(path, transforms={"X": "log1p"}), needles


@case
def h5ad_normalized_x_names_the_counts_layer(tmp: Path) -> Built:
    a = make_adata()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))
    path = write_v07(a, tmp / "v07.h5ad")
    needles = [str(path), "X: non-integer count 1.38629 at cell 'cell0' (row 0)", "data.layers", "['counts']"]
    return single_cell(path, transforms={"X": "log1p"}), needles


@case
def h5ad_library_size_key_not_positive(tmp: Path) -> Built:
    a = make_adata()
    a.obs["size_factor"] = np.linspace(-0.326, 1.0, a.n_obs)
    path = write_h5ad(tmp, a)
    needles = [str(path), "obs key 'size_factor': library size -0.326 at cell 'cell0'", "library_size_key"]
    return single_cell(path, library_size_key="size_factor"), needles


@case
def h5ad_empty_cell_names_library_size_key(tmp: Path) -> Built:
    a = make_adata()
    x = a.X.toarray()
    x[4] = 0
    a.X = sp.csr_matrix(x)
    path = write_h5ad(tmp, a)
    return single_cell(path), [str(path), "cell 'cell4' has no counts", "data.library_size_key"]


@case
def h5ad_pre07_nan_in_dense_x(tmp: Path) -> Built:
    a = make_adata()
    x = a.X.toarray()
    x[7, 3] = np.nan
    a.X = x
    path = write_pre07(a, tmp / "pre07.h5ad")
    return single_cell(path), [str(path), "X: NaN value at cell 'cell7' (row 7)", "data.layers"]


@case
def h5ad_pre07_missing_obs_key(tmp: Path) -> Built:
    path = write_pre07(make_adata(), tmp / "pre07.h5ad")
    needles = [str(path), "obs key 'celltype' not found (obs columns: ['cell_type', 'batch', 'donor'])"]
    return single_cell(path, cell_type_key="celltype"), needles


@case
def h5ad_v07_missing_var_key(tmp: Path) -> Built:
    path = write_v07(make_adata(), tmp / "v07.h5ad")
    needles = [str(path), "var key 'chromosome' not found for modality 'X' (var columns: ['chrom'])"]
    return single_cell(path, feature_group_key={"X": "chromosome"}), needles


@case
def h5ad_obsm_modality_missing(tmp: Path) -> Built:
    path = write_h5ad(tmp, make_adata())
    needles = [str(path), "modality 'protein'", "not an obsm key (obsm: [])", "data.modalities"]
    return single_cell(path, modalities=["X", "protein"]), needles


@case
def h5ad_x_not_a_matrix(tmp: Path) -> Built:
    path = write_h5ad(tmp, make_adata())
    with h5py.File(path, "a") as f:
        del f["X"]
        f["X"] = np.arange(60.0)
    return single_cell(path), [str(path), "X: expected a 2-D matrix"]


# ---- the test --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_status_2(name: str, workdir: Path, capsys) -> None:
    run_bad(workdir, capsys, CASES[name])


def test_corpus_is_broad() -> None:
    assert len(CASES) >= 25
    families = {"pdb", "mmcif", "fasta", "h5ad", "mudata", "perturbation", "smiles", "contact", "hyper"}
    families |= {"image", "config", "search_space", "label"}
    for family in families:
        assert any(family in name for name in CASES), family


def _good_case(tmp: Path) -> Built:
    return good_hypergraph(tmp), ["exp.yaml"]


def test_the_harness_lets_a_traceback_through(workdir: Path, capsys, monkeypatch) -> None:
    """An error the CLI does not treat as a user error escapes as an exception: the cases above would fail."""
    from plexlab.datamodules.hypergraph import HypergraphDataModule

    def boom(self, stage=None):
        raise KeyError("not a user error")

    monkeypatch.setattr(HypergraphDataModule, "setup", boom)
    with pytest.raises(KeyError):
        run_bad(workdir, capsys, _good_case)


@pytest.mark.parametrize(
    "name", ["search_space_low_above_high", "search_space_unknown_distribution", "config_unknown_model_key"]
)
def test_sweep_command_refuses_bad_files_before_ray_starts(
    name: str, workdir: Path, capsys, monkeypatch
) -> None:
    import ray

    def no_ray(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray was started for a file that does not validate")

    monkeypatch.setattr(ray, "init", no_ray)
    run_bad(workdir, capsys, CASES[name], command="sweep")


def test_error_after_the_run_started_leaves_it_failed(workdir: Path, capsys, monkeypatch) -> None:
    """A record found bad only while training (a lazily read file): the run ends FAILED with the reason as
    a tag, never RUNNING, and the command still prints one line with exit status 2."""
    from plexlab.datamodules.errors import DataError
    from plexlab.modules.hypergraph.hypergcl import HyperGCL

    bad_file = workdir / "graph" / "features.npz"

    def bad_batch(self: Any, batch: Any, batch_idx: int) -> None:
        raise DataError(bad_file, "node 7: unreadable in the middle of an epoch")

    monkeypatch.setattr(HyperGCL, "training_step", bad_batch)
    path = workdir / "exp.yaml"
    path.write_text(yaml.safe_dump(good_hypergraph(workdir), sort_keys=False))
    capsys.readouterr()
    status = cli.main(["fit", str(path)])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    # Lightning's start-up lines (GPU available...) came before; the error is the one last line.
    lines = err.splitlines()
    assert lines[-1] == f"plexlab: error: {bad_file}: node 7: unreadable in the middle of an epoch"
    assert "Traceback" not in err and sum("error" in x for x in lines) == 1, err
    (run,) = runs_in_store(workdir)
    assert run.info.status == "FAILED"
    assert "node 7" in run.data.tags[schema.ERROR]


@pytest.mark.parametrize(
    ("name", "command"),
    [("h5ad_nan_counts", ["plexlab"]), ("pdb_gz_truncated_in_folder", ["-m", "plexlab.cli"])],
    ids=["console-script", "python-m"],
)
def test_real_command_prints_one_line(name: str, command: list[str], workdir: Path) -> None:
    """The installed command, in its own process: logging and library warnings must not add lines."""
    config, needles = CASES[name](workdir)[:2]
    (workdir / "exp.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if command == ["plexlab"]:  # the console script the package installs beside the interpreter
        script = Path(sys.executable).parent / "plexlab"
        if not script.exists():
            pytest.skip(f"no console script at {script} (package not installed)")
        argv = [str(script)]
    else:
        argv = [sys.executable, *command]
    done = subprocess.run(
        [*argv, "fit", "exp.yaml"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("plexlab: error: ") and all(n in line for n in needles), line
    assert runs_in_store(workdir) == []
