"""Evaluation protocols of the protein data module: labels, splits and partners that do not leak.

- DeepFRI's GO annotation file gives MF, BP and CC as separate label sets (`go_mf`, `go_bp`, `go_cc`), each
  with the file's term list as its label space; EC files give `ec`.
- `split: deepfri` puts each chain where the benchmark's lists put it; chains on no list are left out and
  counted; an empty split, or a chain on the training and an evaluation list, is a one-line DataError.
- `split: random` never reuses one split as another: too few entries is a DataError.
- Pretraining partners (family/superfamily views) come from the anchor's own split.

The data here is generated: sequence-only chains (FASTA, ids like DeepFRI's `1ABC-A`) and small label files.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from plexlab import cli
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.protein.datamodule import ProteinDataModule
from plexlab.datamodules.protein.labels import read_label_table
from plexlab.datamodules.protein.views import ViewSampler

SEQ = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
MF = ["GO:0000166", "GO:0003677", "GO:0005524"]
BP = ["GO:0006281", "GO:0006412"]
CC = ["GO:0005737", "GO:0005634"]


def go_annotations(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """A file in the layout of DeepFRI's nrPDB-GO_2019.06.18_annot.tsv."""
    lines = []
    for ont, terms in (("molecular_function", MF), ("biological_process", BP), ("cellular_component", CC)):
        lines += [f"### GO-terms ({ont})", "\t".join(terms)]
        lines += [f"### GO-names ({ont})", "\t".join(f"name of {t}" for t in terms)]
    lines.append(
        "### PDB-chain\tGO-terms (molecular_function)\tGO-terms (biological_process)\t"
        "GO-terms (cellular_component)"
    )
    lines += ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def ec_annotations(path: Path, rows: list[tuple[str, str]], terms: list[str]) -> Path:
    """A file in the layout of DeepFRI's nrPDB-EC_2020.04_annot.tsv."""
    lines = ["### EC-numbers", "\t".join(terms), "### PDB-chain\tEC-numbers", *("\t".join(r) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def fasta(path: Path, ids: list[str]) -> Path:
    path.write_text("".join(f">{i}\n{SEQ}\n" for i in ids))
    return path


def lists(folder: Path, prefix: str, **splits: list[str]) -> dict[str, Path]:
    out = {}
    for name, ids in splits.items():
        out[name] = folder / f"{prefix}_{name}.txt"
        out[name].write_text("".join(f"{i}\n" for i in ids))
    return out


GO_ROWS = [
    ("1AAA-A", "GO:0000166,GO:0005524", "GO:0006281", "GO:0005737"),
    ("2BBB-A", "GO:0003677", "", "GO:0005634,GO:0005737"),  # no BP term
    ("3CCC-B", "", "GO:0006412", ""),
    ("4DDD-A", "GO:0005524", "GO:0006281,GO:0006412", "GO:0005634"),
]


# ---------------------------------------------------------------- labels


def test_deepfri_go_file_gives_three_label_sets(tmp_path: Path) -> None:
    table = read_label_table(go_annotations(tmp_path / "go_annot.tsv", GO_ROWS))
    assert table.keying == "id" and table.columns == ["go_mf", "go_bp", "go_cc"]
    assert table.vocabularies == {"go_mf": MF, "go_bp": BP, "go_cc": CC}
    assert table.rows[("2BBB", "A")] == {"go_mf": ["GO:0003677"], "go_bp": [], "go_cc": CC[::-1]}
    assert table.rows[("3CCC", "B")] == {"go_mf": [], "go_bp": ["GO:0006412"], "go_cc": []}


def test_go_ontology_is_chosen_by_label_column(tmp_path: Path) -> None:
    labels = go_annotations(tmp_path / "go_annot.tsv", GO_ROWS)
    seqs = fasta(tmp_path / "chains.fasta", [r[0] for r in GO_ROWS])
    dm = ProteinDataModule(
        fasta_file=str(seqs),
        labels_file=str(labels),
        mode="function",
        label_column="go_bp",
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.3,
        test_fraction=0.3,
    )
    dm.setup("fit")
    assert dm.label_names == BP  # the file's term list, in its order: the benchmark's label space
    assert [it["id"] for it in dm.items] == ["1AAA-A", "3CCC-B", "4DDD-A"]
    assert dict(dm.skip_table()) == {"no label": 1}  # 2BBB-A has no BP term
    by_id = {it["id"]: i for i, it in enumerate(dm.items)}
    assert dm.label_vector(by_id["4DDD-A"]).tolist() == [1.0, 1.0]
    assert dm.label_vector(by_id["3CCC-B"]).tolist() == [0.0, 1.0]
    assert dm.model_kwargs()["num_labels"] == 2


def test_ec_file_vocabulary_is_the_label_space(tmp_path: Path) -> None:
    terms = ["1.1.1.1", "2.7.4.-", "3.1.4.-", "4.6.1.-"]
    labels = ec_annotations(tmp_path / "ec_annot.tsv", [("1AAA-A", "2.7.4.-"), ("2BBB-A", "1.1.1.1")], terms)
    seqs = fasta(tmp_path / "chains.fasta", ["1AAA-A", "2BBB-A", "3CCC-A"])
    dm = ProteinDataModule(
        fasta_file=str(seqs),
        labels_file=str(labels),
        mode="function",
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.0,
        test_fraction=0.0,
    )
    dm.setup("fit")
    assert dm.label_names == terms and dm.model_kwargs()["num_labels"] == 4
    with pytest.raises(DataError, match="no 'go_mf' labels \\(label columns: ec\\)"):
        ProteinDataModule(
            fasta_file=str(seqs),
            labels_file=str(labels),
            mode="function",
            label_column="go_mf",
            cache_dir=str(tmp_path / "cache"),
        ).setup("fit")


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("1AAA-A\tGO:9999999\t\t", r"line 14: go_mf term 'GO:9999999' of 1AAA-A is not in the term list"),
        ("1AAA-A\tGO:0003677\t", r"line 14: 3 fields, the header has 4"),
        ("1AAA\tGO:0003677\t\t", r"line 14: key '1AAA' is not PDB-CHAIN"),
    ],
    ids=["unknown-term", "missing-field", "bad-key"],
)
def test_bad_go_rows_are_one_line_errors(tmp_path: Path, row: str, needle: str) -> None:
    path = go_annotations(tmp_path / "go_annot.tsv", [])
    path.write_text(path.read_text() + row + "\n")
    with pytest.raises(DataError, match=needle) as err:
        read_label_table(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


# ---------------------------------------------------------------- splits


def deepfri_module(tmp_path: Path, ids: list[str], **kw) -> ProteinDataModule:
    terms = ["1.1.1.1", "2.7.4.-"]
    rows = [(i, terms[k % 2]) for k, i in enumerate(ids)]
    labels = ec_annotations(tmp_path / "nrPDB-EC_X_annot.tsv", rows, terms)
    seqs = fasta(tmp_path / "chains.fasta", ids)
    args = dict(
        fasta_file=str(seqs),
        labels_file=str(labels),
        mode="function",
        split="deepfri",
        cache_dir=str(tmp_path / "cache"),
    )
    return ProteinDataModule(**{**args, **kw})


def test_deepfri_split_follows_the_benchmark_lists(tmp_path: Path) -> None:
    ids = ["1AAA-A", "1AAA-B", "2BBB-A", "3CCC-A", "4DDD-A", "5EEE-A", "9ZZZ-A"]
    # lists found beside the annotation file by DeepFRI's names; 9ZZZ-A is on none
    train, valid = ["1AAA-A", "2BBB-A", "5EEE-A"], ["1AAA-B", "3CCC-A"]
    lists(tmp_path, "nrPDB-EC_X", train=train, valid=valid, test=["4DDD-A"])
    dm = deepfri_module(tmp_path, ids)
    dm.setup("fit")
    split = {name: sorted(dm.items[i]["id"] for i in idx) for name, idx in
             (("train", dm.train_idx), ("val", dm.val_idx), ("test", dm.test_idx))}  # fmt: skip
    assert split == {"train": ["1AAA-A", "2BBB-A", "5EEE-A"], "val": ["1AAA-B", "3CCC-A"], "test": ["4DDD-A"]}
    assert dict(dm.skip_table()) == {"not in split lists": 1}
    assert "9ZZZ" in dm.skipped[0].detail and "9ZZZ-A" not in dm.sample_ids()


def test_deepfri_split_with_an_empty_list_is_a_data_error(tmp_path: Path) -> None:
    ids = ["1AAA-A", "2BBB-A", "3CCC-A"]
    paths = lists(tmp_path, "nrPDB-EC_X", train=["1AAA-A", "2BBB-A"], valid=["3CCC-A"], test=["7XXX-A"])
    with pytest.raises(
        DataError, match=r"no chain of the data is on this test list \(train 2, val 1, test 0 "
    ):
        deepfri_module(tmp_path, ids).setup("fit")
    # naming another list for the test stage is explicit, and allowed
    dm = deepfri_module(tmp_path, ids, test_list_file=str(paths["valid"]))
    dm.setup("fit")
    assert dm.test_idx == dm.val_idx and dm.train_idx == [0, 1]


def test_chain_on_training_and_evaluation_lists_is_a_data_error(tmp_path: Path) -> None:
    lists(tmp_path, "nrPDB-EC_X", train=["1AAA-A", "2BBB-A"], valid=["2BBB-A"], test=["3CCC-A"])
    with pytest.raises(DataError, match=r"valid\.txt: 1 chains also on the training list .* 2BBB-A\)"):
        deepfri_module(tmp_path, ["1AAA-A", "2BBB-A", "3CCC-A"]).setup("fit")


def test_missing_list_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nrPDB-EC_X_train\.txt: cannot read split list"):
        deepfri_module(tmp_path, ["1AAA-A"]).setup("fit")


def test_random_split_never_reuses_a_split(tmp_path: Path) -> None:
    # 4 entries at the default fractions (0.1): each held-out split gets one entry, none is the training set
    dm = ProteinDataModule(
        fasta_file=str(fasta(tmp_path / "c.fasta", ["1AAA-A", "2BBB-A", "3CCC-A", "4DDD-A"])),
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    assert (len(dm.train_idx), len(dm.val_idx), len(dm.test_idx)) == (2, 1, 1)
    assert not set(dm.train_idx) & set(dm.val_idx) and not set(dm.val_idx) & set(dm.test_idx)
    # 2 entries cannot hold out validation and test and still train
    few = ProteinDataModule(
        fasta_file=str(fasta(tmp_path / "d.fasta", ["1AAA-A", "2BBB-A"])), cache_dir=str(tmp_path / "cache")
    )
    few.setup("fit")  # the chains can still be read and embedded (predict), but not split for training
    assert len(few.predict_dataloader().dataset) == 2
    for loader in (few.train_dataloader, few.val_dataloader, few.test_dataloader):
        with pytest.raises(DataError, match=r"2 PDB entries are too few to hold out val_fraction 0\.1"):
            loader()
    # a fraction of 0 means no such split: asking for its loader is an error, not the training set
    none = ProteinDataModule(
        fasta_file=str(fasta(tmp_path / "e.fasta", ["1AAA-A", "2BBB-A"])),
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.0,
        test_fraction=0.0,
    )
    none.setup("fit")
    with pytest.raises(DataError, match=r"data\.val_fraction: is 0: there is no val split"):
        none.val_dataloader()


def test_empty_deepfri_split_through_the_cli_is_one_line_exit_2(workdir: Path, capsys) -> None:
    ids = ["1AAA-A", "2BBB-A", "3CCC-A"]
    lists(workdir, "nrPDB-EC_X", train=["1AAA-A", "2BBB-A"], valid=["3CCC-A"], test=["7XXX-A"])
    dm = deepfri_module(workdir, ids)
    config = {
        "name": "empty-split",
        "model": {"name": "protein_function", "esm_layers": 1, "esm_dim": 16, "esm_heads": 2},
        "data": {
            "name": "protein",
            **{k: dm.hparams[k] for k in ("fasta_file", "labels_file", "mode")},
            "split": "deepfri",
        },
        "trainer": {"max_epochs": 1, "accelerator": "cpu"},
    }
    (workdir / "exp.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    status = cli.main(["fit", str(workdir / "exp.yaml")])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    (line,) = err.splitlines()
    assert "nrPDB-EC_X_test.txt: no chain of the data is on this test list" in line, line
    assert "Traceback" not in err
    if (workdir / "mlflow.db").exists():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
        ids = [e.experiment_id for e in client.search_experiments()]
        assert all(r.info.status != "RUNNING" for r in client.search_runs(ids))


# ---------------------------------------------------------------- partners


def test_sampler_draws_partners_from_the_anchors_pool() -> None:
    fams = [["F"], ["F"], ["F"], ["F"], []]
    sampler = ViewSampler(["family"], fams, [[]] * 5, pools={"train": [0, 1, 2], "val": [3, 4]})
    rng = random.Random(0)
    for _ in range(20):
        assert sampler.partner(0, "family", rng, "train") in {1, 2}
    # the only other family member of val anchor 3 is in training: no partner, the anchor falls back to itself
    assert sampler.partner(3, "family", rng, "val") is None
    a, b, _ = sampler.sample(3, lambda i: _view(i), rng, "val")
    assert a.id == b.id == "3" and sampler.fallbacks == 1
    assert sampler.partner(3, "family", rng) in {0, 1, 2}  # without a pool: every protein (the old draw)


def _view(i: int):
    from plexlab.datamodules.protein.views import ProteinView

    return ProteinView(str(i), SEQ, None)


def test_pretraining_pairs_never_cross_splits(tmp_path: Path) -> None:
    """Family F: 5 training members, one validation member. Validation pairs stay in validation."""
    ids = ["1AAA-A", "2BBB-A", "3CCC-A", "4DDD-A", "5EEE-A", "6FFF-A", "7GGG-A", "8HHH-A"]
    families = {"1AAA-A": "F", "2BBB-A": "F", "3CCC-A": "F", "4DDD-A": "F", "5EEE-A": "F", "6FFF-A": "F"}
    labels = tmp_path / "families.tsv"
    labels.write_text("id\tfamily\n" + "".join(f"{i}\t{families.get(i, '')}\n" for i in ids))
    paths = lists(tmp_path, "split", train=ids[:5], valid=["6FFF-A", "7GGG-A"], test=["8HHH-A"])
    dm = ProteinDataModule(
        fasta_file=str(fasta(tmp_path / "c.fasta", ids)),
        labels_file=str(labels),
        split="deepfri",
        train_list_file=str(paths["train"]),
        valid_list_file=str(paths["valid"]),
        test_list_file=str(paths["test"]),
        views=["family"],
        batch_size=2,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    val_ids = {dm.items[i]["id"] for i in dm.val_idx}
    for batch in dm.val_dataloader():
        assert set(batch.b.ids) <= val_ids, batch.b.ids
    train_ids = {dm.items[i]["id"] for i in dm.train_idx}
    seen = set()
    for _ in range(3):
        for batch in dm.train_dataloader():
            assert set(batch.b.ids) <= train_ids, batch.b.ids
            seen |= {b for a, b in zip(batch.a.ids, batch.b.ids, strict=True) if a != b}
    assert seen, "training anchors of family F found family partners"
