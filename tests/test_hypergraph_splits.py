"""The hypergraph data module's two split protocols: HyperGCN's fixed splits (validation carved from their
test nodes) and the paper's random 10 % / 10 % / 80 % splits seeded by the split index; and both through
the real runner, with MLflow on."""

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from _bad_input_runs import runs_in_store
from _hypergraph_files import write_graph
from plexlab import cli
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.hypergraph import HypergraphDataModule, random_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def parts(dm: HypergraphDataModule) -> dict[str, set[int]]:
    dm.setup("fit")
    b = dm.batch
    return {
        k: set(np.flatnonzero(m.numpy()).tolist())
        for k, m in [("train", b.train_mask), ("val", b.val_mask), ("test", b.test_mask)]
    }


def test_random_protocol_is_the_papers_10_10_80_and_ignores_the_fixed_splits(tmp_path):
    folder = write_graph(tmp_path / "g")  # 60 nodes
    (folder / "splits.json").unlink()  # the random protocol never reads it
    got = parts(HypergraphDataModule(str(folder), protocol="random", split=0))
    assert [len(got[k]) for k in ("train", "val", "test")] == [6, 6, 48]
    assert got["train"] | got["val"] | got["test"] == set(range(60))
    assert not (got["train"] & got["val"] or got["train"] & got["test"] or got["val"] & got["test"])


def test_random_splits_are_one_reproducible_run_per_split_index(tmp_path):
    folder = write_graph(tmp_path / "g")
    split = lambda **kw: parts(HypergraphDataModule(str(folder), protocol="random", **kw))  # noqa: E731
    assert split(split=3) == split(split=3)
    assert split(split=3)["train"] != split(split=4)["train"]
    assert split(split=3, seed=1)["train"] != split(split=3)["train"]


def test_random_split_fractions_are_honoured():
    got = random_split(100, 0.2, 0.3, seed=0, split=0)
    assert [got[k].size for k in ("train", "val", "test")] == [20, 30, 50]


def test_hypergcn_protocol_carves_validation_from_the_test_nodes(tmp_path):
    folder = write_graph(tmp_path / "g")  # split 0: 12 train, 48 test nodes
    got = parts(HypergraphDataModule(str(folder)))
    assert got["train"] == set(range(0, 60, 5))
    assert [len(got["val"]), len(got["test"])] == [10, 38]  # round(0.2 * 48) moved to validation
    assert not (got["val"] | got["test"]) & got["train"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_fraction": 0.2}, "train_fraction applies to protocol random"),
        ({"protocol": "random", "train_fraction": 0.5, "val_fraction": 0.5}, "0.5 + val_fraction 0.5 must"),
        ({"protocol": "random", "val_fraction": 1.5}, "val_fraction must be in [0, 1), got 1.5"),
        ({"split": -1}, "split must be a non-negative run index, got -1"),
    ],
)
def test_fractions_that_cannot_apply_are_refused(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=re.escape(message)):
        HypergraphDataModule(str(tmp_path), **kwargs)


def test_random_protocol_on_real_cora(shared_data: Path):
    folder = shared_data / "hypergraph" / "cocitation_cora"
    got = parts(HypergraphDataModule(str(folder), protocol="random", split=0))
    assert [len(got[k]) for k in ("train", "val", "test")] == [271, 271, 2166]  # of 2,708 papers
    fixed = parts(HypergraphDataModule(str(folder), protocol="hypergcn", split=0))
    assert [len(fixed[k]) for k in ("train", "val", "test")] == [140, 514, 2054]  # 0.2 of HyperGCN's 2,568


def _experiment(workdir: Path) -> Path:
    folder = write_graph(workdir / "graph")
    cfg = {
        "name": "hypergraph-protocols",
        "seed": 0,
        "model": {"name": "hypergcl", "hidden": 8, "aug": "feature"},
        "data": {"name": "hypergraph", "path": str(folder), "protocol": "random", "split": 2},
        "trainer": {"max_epochs": 2, "accelerator": "cpu"},
    }
    path = workdir / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_random_protocol_through_the_cli_records_the_protocol(workdir: Path):
    assert cli.main(["fit", str(_experiment(workdir))]) == 0
    (run,) = runs_in_store(workdir)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["data.protocol"] == "random" and params["data.split"] == "2"
    assert params["model.aug"] == "feature" and params["model.negatives"] == "view"
    assert 0.0 <= run.data.metrics["test/acc"] <= 1.0


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("data.train_fraction=0.2", ["graph", "train_fraction applies to protocol random"]),
        ("model.aug=incidence", ["exp.yaml", "model.aug", "'hyperedge'"]),  # the old name is refused
    ],
)
def test_settings_that_do_not_apply_exit_2_with_one_line(workdir: Path, capsys, override, needles):
    path = _experiment(workdir)
    capsys.readouterr()
    assert cli.main(["fit", str(path), "--set", "data.protocol=hypergcn", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    (line,) = [x for x in err.splitlines() if "error" in x]
    assert line.startswith("plexlab: error: ") and all(n in line for n in needles), line
    assert "Traceback" not in err
    assert all(r.info.status != "RUNNING" for r in runs_in_store(workdir))
