"""Experiment files: every bad key is a one-line ConfigError naming the file and the key."""

import subprocess
import sys

import pytest
import yaml
from _hypergraph_files import write_graph
from plexlab import config, registry
from plexlab.errors import ConfigError, RegistryError


@pytest.fixture
def good(tmp_path):
    folder = write_graph(tmp_path / "g")
    return {
        "name": "t",
        "seed": 0,
        "model": {"name": "hypergcl", "hidden": 8},
        "data": {"name": "hypergraph", "path": str(folder)},
        "trainer": {"max_epochs": 2},
    }


def write(tmp_path, cfg):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_good_config_validates_and_overrides(tmp_path, good):
    cfg = config.load(write(tmp_path, good), ["model.lr=0.01", "trainer.max_epochs=3"])
    assert cfg.model["lr"] == 0.01 and cfg.trainer["max_epochs"] == 3
    assert cfg.flat_params()["model.hidden"] == 8
    assert len(cfg.config_hash()) == 12


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (lambda c: c.update(epochs=3), "epochs", "unknown key"),
        (lambda c: c["model"].update(hiddn=3), "model.hiddn", "unknown key for hypergcl"),
        (lambda c: c["model"].update(hidden="big"), "model.hidden", "integer"),
        (lambda c: c["model"].update(aug="rotate"), "model.aug", "'edge'"),
        (lambda c: c["model"].update(name="nope"), "model.name", "unknown model"),
        (lambda c: c["data"].update(path="/no/such/dir"), "data.path", "no such file"),
        (lambda c: c["trainer"].update(max_epocs=3), "trainer.max_epocs", "not an argument"),
        (lambda c: c["trainer"].update(logger=True), "trainer.logger", "set by plexlab"),
        (lambda c: c.pop("model"), "model", "Field required"),
        (lambda c: c.update(seed="x"), "seed", "integer"),
        (
            lambda c: c.update(sweep={"space": {"model.lr": {"loguniform": [1e-2, 1e-4]}}}),
            "sweep.space.model.lr",
            "must be below",
        ),
        (
            lambda c: c.update(sweep={"space": {"model.nope": {"choice": [1]}}}),
            "sweep.space.model.nope",
            "invalid",
        ),
        (lambda c: c.update(sweep={"num_samples": 0}), "sweep.num_samples", "greater than or equal"),
        (lambda c: c.update(sweep={"scheduler": {"name": "magic"}}), "sweep.scheduler.name", "fifo"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, good, edit, key, problem):
    edit(good)
    path = write(tmp_path, good)
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: {key}: ") and problem in message and "\n" not in message


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="line 2: not valid YAML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config.parse_override("model.lr")


def test_registry_is_lazy_and_complete():
    assert {"hypergcl", "protein_mmcl", "sailerx", "unitednet", "svae", "cpac", "e2"} <= set(
        registry.models()
    )
    for entry in [*registry.models().values(), *registry.datamodules().values()]:
        cls = entry.load()
        assert cls.__doc__, entry.name
    with pytest.raises(RegistryError, match="unknown model 'x'"):
        registry.model_class("x")


def test_stdlib_platform_is_not_shadowed_from_repo_root():
    root = config.Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", "import platform, torch; print(platform.system())"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() and not (root / "platform" / "__init__.py").exists()
