"""Base files (`base: other.yaml`) and `plexlab check`: bases merge first (mappings deeply, lists replaced),
recursively, refuse cycles, and an error names the file its bad key came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from _experiment import write_tiny_hypergraph
from plexlab import api, cli, config
from plexlab.config_files import read_composed
from plexlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, content: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """An experiment file in its own folder, which sweep files elsewhere name as their base."""
    graph = write_tiny_hypergraph(tmp_path / "graph")
    return write(
        tmp_path / "experiments" / "exp.yaml",
        {
            "name": "exp",
            "model": {"name": "hypergcl", "hidden": 8, "lr": 1.0e-3, "dropout": 0.2},
            "data": {"name": "hypergraph", "path": str(graph)},
            "trainer": {"max_epochs": 5, "accelerator": "cpu"},
            "tracking": {"uri": None, "tags": {"dataset": "tiny", "owner": "lab"}},
        },
    )


def test_a_base_merges_first_deeply_relative_to_the_file(tmp_path: Path, experiment: Path) -> None:
    sweep = write(
        tmp_path / "sweeps" / "exp_sweep.yaml",
        {
            "base": "../experiments/exp.yaml",  # relative to this file, not to the working directory
            "name": "exp-sweep",
            "model": {"lr": 0.01},
            "trainer": {"max_epochs": 2},
            "tracking": {"tags": {"dataset": "tiny2"}},
        },
    )
    cfg = config.load(sweep)
    assert cfg.name == "exp-sweep"
    assert cfg.model == {"name": "hypergcl", "hidden": 8, "lr": 0.01, "dropout": 0.2}
    assert cfg.trainer == {"max_epochs": 2, "accelerator": "cpu"}
    assert cfg.tracking.tags == {"dataset": "tiny2", "owner": "lab"}
    assert cfg.source == str(sweep)  # the run records the file that was loaded


def test_lists_are_replaced_and_bases_chain(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", {"x": {"list": [1, 2, 3], "keep": 1}, "y": 1})
    write(tmp_path / "sub" / "b.yaml", {"base": "../a.yaml", "x": {"list": [9]}, "z": 2})
    write(tmp_path / "c.yaml", {"base": "sub/b.yaml", "y": 3})
    raw, origins = read_composed(tmp_path / "c.yaml")
    assert raw == {"x": {"list": [9], "keep": 1}, "y": 3, "z": 2}
    assert origins["x.keep"].endswith("a.yaml") and origins["x.list"].endswith("b.yaml")
    assert origins["y"].endswith("c.yaml")


def test_a_cycle_of_bases_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", {"base": "b.yaml", "name": "a"})
    write(tmp_path / "b.yaml", {"base": "a.yaml", "name": "b"})
    with pytest.raises(ConfigError, match=r"base files form a cycle: a\.yaml -> b\.yaml -> a\.yaml"):
        config.load(tmp_path / "a.yaml")
    write(tmp_path / "self.yaml", {"base": "self.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        config.load(tmp_path / "self.yaml")


def test_a_missing_base_names_the_file_that_names_it(tmp_path: Path) -> None:
    child = write(tmp_path / "child.yaml", {"base": "nowhere.yaml", "name": "c"})
    with pytest.raises(ConfigError) as caught:
        config.load(child)
    assert str(caught.value) == f"{child}: base: no such file: nowhere.yaml"


def test_a_bad_key_names_the_base_file_it_came_from(tmp_path: Path, experiment: Path, capsys) -> None:
    raw = yaml.safe_load(experiment.read_text())
    raw["model"]["hiddn"] = 8
    write(experiment, raw)
    sweep = write(tmp_path / "sweep.yaml", {"base": "experiments/exp.yaml", "name": "s"})
    with pytest.raises(ConfigError) as caught:
        config.load(sweep)
    assert caught.value.source == str(experiment.resolve())
    assert str(caught.value).startswith(f"{experiment.resolve()}: model.hiddn: unknown key for hypergcl")
    # Through the CLI: one line, exit 2.
    assert cli.main(["check", str(sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "exp.yaml: model.hiddn" in err


def test_a_bad_key_of_the_file_itself_names_that_file(tmp_path: Path, experiment: Path) -> None:
    own = {"base": "experiments/exp.yaml", "name": "s", "model": {"lr": "x"}}
    sweep = write(tmp_path / "sweep.yaml", own)
    with pytest.raises(ConfigError, match=rf"^{sweep}: model\.lr: "):
        config.load(sweep)


def test_check_prints_the_resolved_config_as_yaml_and_trains_nothing(
    workdir: Path, experiment: Path, capsys
) -> None:
    sweep = write(workdir / "sweep.yaml", {"base": "experiments/exp.yaml", "name": "s"})
    assert cli.main(["check", str(sweep), "--set", "model.hidden=16"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = config.load(sweep, ["model.hidden=16"]).to_dict()
    assert printed == expected and printed["model"]["hidden"] == 16 and "base" not in printed
    assert api.check(sweep, model__hidden=16) == expected
    assert not (workdir / "mlflow.db").exists() and not (workdir / "plexlab_runs").exists()


def test_check_refuses_what_a_sweep_could_not_run(tmp_path: Path, experiment: Path) -> None:
    sweep = write(
        tmp_path / "sweep.yaml",
        {"base": "experiments/exp.yaml", "sweep": {"scheduler": {"name": "asha", "grace_period": 50}}},
    )
    with pytest.raises(ConfigError, match=r"sweep\.scheduler\.grace_period"):
        api.check(sweep)


SWEEP_FILES = sorted((ROOT / "sweeps").glob("*_sweep.yaml"))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_file_names_its_experiment_file(path: Path, shared_data: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the files' data paths are relative to the repository root
    base = yaml.safe_load(path.read_text())["base"]
    assert (path.parent / base).is_file()
    resolved = api.check(path)
    assert resolved["sweep"] is not None and resolved["name"] != config.load(path.parent / base).name
