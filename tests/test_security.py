"""Security defaults: nothing a user hands plexlab (checkpoint, experiment file, override, cache file) can run
code when it is read, and what plexlab starts on this machine listens on 127.0.0.1 only.

- Checkpoints load with `torch.load(weights_only=True)`: a checkpoint holding a pickled object whose
  unpickling would run code is refused with one line (exit status 2) and the code never runs; the same for a
  resumed trial's checkpoint (Lightning, on torch's weights-only default), a pretrained encoder and the
  protein graph cache (a poisoned entry is rebuilt).
- YAML is read with `safe_load`: `!!python/...` tags in an experiment file or a `--set` value are refused.
- No pickle of user data: a static check of the package's source (every call that could unpickle).
- Local Ray starts with its dashboard on 127.0.0.1 (checked on the `ray.init` call, Ray is not started);
  `plexlab ui` binds 127.0.0.1 by default. The compose file's bindings are checked in tests/test_docker.py.

Every refusal test first shows that its payload is live (loading it unsafely does run it), so a test that
passes means the safe path refused real code, not a harmless file.
"""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from _hypergraph_files import write_graph
from _protein_files import plain, write_pdb
from plexlab import cli, local_ray, train
from plexlab.datamodules.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("platform", "modules", "datamodules")


class RunsCode:
    """Unpickling this creates a directory: a stand-in for any code an attacker's checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def poisoned_checkpoint(path: Path, marker: Path, state_dict: dict | None = None) -> Path:
    """A Lightning-shaped checkpoint whose hyper_parameters unpickle into a call of os.mkdir(marker)."""
    torch.save({"state_dict": state_dict or {}, "hyper_parameters": RunsCode(marker)}, path)
    return path


def assert_payload_is_live(path: Path, marker: Path) -> None:
    """The file really runs code when loaded unsafely (then the marker is removed again)."""
    torch.load(path, weights_only=False)
    assert marker.is_dir(), "the poisoned file did not run its code: the test would prove nothing"
    marker.rmdir()


def hypergraph_experiment(workdir: Path) -> Path:
    config = {
        "name": "security",
        "seed": 0,
        "model": {"name": "hypergcl", "hidden": 8},
        "data": {"name": "hypergraph", "path": str(write_graph(workdir / "graph"))},
        "trainer": {"max_epochs": 1, "accelerator": "cpu"},
    }
    path = workdir / "exp.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    status = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    (line,) = err.splitlines()
    assert line.startswith("plexlab: error: "), line
    return line


# ---- checkpoints ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["test", "embed"])
def test_checkpoint_that_runs_code_is_refused(command: str, workdir: Path, capsys) -> None:
    exp = hypergraph_experiment(workdir)
    marker = workdir / "pwned"
    ckpt = poisoned_checkpoint(workdir / "evil.ckpt", marker)
    assert_payload_is_live(ckpt, marker)
    extra = ["--out", str(workdir / "emb.npz")] if command == "embed" else []
    line = one_line_error(capsys, [command, str(exp), "--ckpt", str(ckpt), *extra])
    assert "--ckpt" in line and str(ckpt) in line and "not a loadable checkpoint" in line, line
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert not (workdir / "mlflow.db").exists(), "the refusal came before any MLflow run"
    assert not (workdir / "emb.npz").exists()


def test_resumed_trial_checkpoint_that_runs_code_is_refused(workdir: Path) -> None:
    """A sweep trial resumes from a checkpoint on shared storage (Lightning's ckpt_path): refused too."""
    exp = hypergraph_experiment(workdir)
    marker = workdir / "pwned"
    ckpt = poisoned_checkpoint(workdir / "evil.ckpt", marker)
    assert_payload_is_live(ckpt, marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train.fit(exp, track=False, hooks=train.TrainerHooks(resume_from=str(ckpt)), workdir=workdir / "run")
    assert not marker.exists()


def test_pretrained_encoder_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    from plexlab.modules.protein.function import load_encoder_state

    marker = tmp_path / "pwned"
    ckpt = poisoned_checkpoint(tmp_path / "mmcl.ckpt", marker)
    assert_payload_is_live(ckpt, marker)
    with pytest.raises(DataError, match="not a loadable checkpoint"):
        load_encoder_state(torch.nn.Linear(2, 2), ckpt)
    assert not marker.exists()


def test_poisoned_protein_graph_cache_entry_is_rebuilt_without_running_it(tmp_path: Path) -> None:
    from plexlab.datamodules.protein.datamodule import ProteinDataModule

    folder = tmp_path / "structures"
    folder.mkdir()
    write_pdb(folder / "1abc.pdb", plain(24))
    write_pdb(folder / "2def.pdb", plain(20, name="GLY"), chain="B")

    def built() -> ProteinDataModule:
        dm = ProteinDataModule(
            path=str(folder), cache_dir=str(tmp_path / "cache"), val_fraction=0.0, test_fraction=0.0
        )
        dm.setup("fit")
        return dm

    assert built().cache.misses == 2
    marker = tmp_path / "pwned"
    entries = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(entries) == 2
    for entry in entries:  # the right key, so only the unpickling stands between the file and its use
        torch.save({"key": entry.stem, "graphs": RunsCode(marker), "skips": []}, entry)
    assert_payload_is_live(entries[0], marker)
    again = built()
    assert again.cache.rebuilt == 2 and again.cache.hits == 0
    assert not marker.exists()
    assert built().cache.hits == 2, "the rebuilt entries replaced the poisoned ones"


def test_torch_load_defaults_to_weights_only(tmp_path: Path) -> None:
    """Lightning's own checkpoint loading (trial resume, test on the best epoch) relies on this default;
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in the environment would turn it off."""
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0") in ("", "0")
    marker = tmp_path / "pwned"
    ckpt = poisoned_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt)
    assert not marker.exists()


# ---- YAML ----------------------------------------------------------------------------------------------


def test_experiment_file_with_a_python_tag_is_refused(workdir: Path, capsys) -> None:
    marker = workdir / "pwned"
    text = hypergraph_experiment(workdir).read_text()
    text += f"tracking: !!python/object/apply:os.mkdir [{str(marker)!r}]\n"
    yaml.unsafe_load(text)
    assert marker.is_dir(), "the tag is live when loaded unsafely"
    marker.rmdir()
    exp = workdir / "exp.yaml"
    exp.write_text(text)
    line = one_line_error(capsys, ["fit", str(exp)])
    assert str(exp) in line and "not valid YAML" in line and "python/object" in line, line
    assert not marker.exists()
    assert not (workdir / "mlflow.db").exists(), "nothing was tracked"


def test_override_with_a_python_tag_is_refused(workdir: Path, capsys) -> None:
    marker = workdir / "pwned"
    exp = hypergraph_experiment(workdir)
    override = f"seed=!!python/object/apply:os.mkdir [{str(marker)!r}]"
    line = one_line_error(capsys, ["fit", str(exp), "--set", override])
    assert "--set" in line and "seed" in line and "not valid YAML" in line, line
    assert not marker.exists()


def test_sweep_file_with_a_python_tag_is_refused_before_ray_starts(
    workdir: Path, capsys, monkeypatch
) -> None:
    import ray

    def no_ray(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray was started for a file that does not load")

    monkeypatch.setattr(ray, "init", no_ray)
    marker = workdir / "pwned"
    exp = hypergraph_experiment(workdir)
    exp.write_text(exp.read_text() + f"sweep: !!python/object/apply:os.mkdir [{str(marker)!r}]\n")
    line = one_line_error(capsys, ["sweep", str(exp)])
    assert str(exp) in line and "not valid YAML" in line, line
    assert not marker.exists()


# ---- no pickle of user data: a static check of the package -------------------------------------------

# Calls that unpickle whatever file or bytes they are given.
UNPICKLERS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "ray.cloudpickle.load",
    "ray.cloudpickle.loads",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "pandas.read_pickle",
    "yaml.unsafe_load",
    "yaml.unsafe_load_all",
    "yaml.full_load",
    "yaml.full_load_all",
}
SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "SafeLoader", "CSafeLoader"}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """`np.load` -> "numpy.load" through the module's imports; None for calls on computed objects."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Every call in the source that could unpickle user data, as 'file:line: call'."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:  # `import a.b` binds `a`
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    aliases.setdefault("np", "numpy")
    aliases.setdefault("pd", "pandas")
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        method = node.func.attr if isinstance(node.func, ast.Attribute) else name
        bad = name in UNPICKLERS or method == "read_pickle"
        if name == "torch.load":
            bad = not _is_true(_keyword(node, "weights_only"))
        elif name == "numpy.load":
            bad = _is_true(_keyword(node, "allow_pickle"))
        elif name in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            bad = loader is None or _dotted(loader, aliases) not in SAFE_YAML_LOADERS
        elif method == "load_from_checkpoint":
            bad = not _is_true(_keyword(node, "weights_only"))
        if bad:
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node.func)}(...)")
    return found


def test_the_static_check_catches_each_kind_of_unsafe_load() -> None:
    source = """
import pickle, yaml, torch
import numpy as np
from pickle import loads as unpickle
import pandas as pd
from lightning import LightningModule

pickle.load(open("f", "rb"))
unpickle(b"")
torch.load("a.ckpt")
torch.load("a.ckpt", weights_only=False)
np.load("a.npy", allow_pickle=True)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
pd.read_pickle("f.pkl")
df.read_pickle("f.pkl")
LightningModule.load_from_checkpoint("a.ckpt")
# the safe forms
torch.load("a.ckpt", map_location="cpu", weights_only=True)
np.load("a.npy", allow_pickle=False)
np.load("a.npy")
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
LightningModule.load_from_checkpoint("a.ckpt", weights_only=True)
"""
    found = unsafe_loads(source)
    lines = sorted(int(f.split(":")[1]) for f in found)
    assert lines == list(range(8, 19)), found


def test_package_source_never_unpickles_user_data() -> None:
    files = sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 20, "the package source was not found"
    found = [hit for f in files for hit in unsafe_loads(f.read_text(), str(f.relative_to(ROOT)))]
    assert found == [], "unsafe loads in the package:\n" + "\n".join(found)


# ---- what listens where --------------------------------------------------------------------------------


class _Started(Exception):
    """Raised by a stand-in for ray.init / os.execv: the call is recorded, nothing is started."""


def _capture_ray_init(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(local_ray.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(local_ray.ray, "init", lambda **kwargs: calls.append(kwargs))
    return calls


def test_local_ray_dashboard_binds_loopback_and_starts_its_own_instance(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    calls = _capture_ray_init(monkeypatch)
    assert local_ray.start(None) is True
    (kwargs,) = calls
    assert kwargs["address"] == "local", "never join a cluster that was not asked for"
    assert kwargs["dashboard_host"] == "127.0.0.1"
    assert kwargs.get("ray_client_server_port") is None


def test_joining_a_cluster_forwards_only_mlflow_settings_and_no_secret(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.org")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-the-cluster")
    monkeypatch.setenv("RAY_ADDRESS", "head.example.org:6379")
    calls = _capture_ray_init(monkeypatch)
    local_ray.start(None)
    local_ray.start("ray://head.example.org:10001")
    env_vars = [c["runtime_env"]["env_vars"] for c in calls]
    assert [c["address"] for c in calls] == ["head.example.org:6379", "ray://head.example.org:10001"]
    for env in env_vars:
        assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example.org"
        assert env["MLFLOW_TRACKING_USERNAME"] == "alice" and "MLFLOW_TRACKING_PASSWORD" not in env
        assert "AWS_SECRET_ACCESS_KEY" not in env
        assert all(k.startswith(("MLFLOW_", "TUNE_")) for k in env), env
    assert all("dashboard_host" not in c for c in calls), "a joined cluster's dashboard is not ours to set"


def test_plexlab_ui_binds_loopback_by_default(workdir: Path, monkeypatch, capsys) -> None:
    seen: list[list[str]] = []

    def fake_execv(path: str, argv: list[str]) -> None:
        seen.append(argv)
        raise _Started

    monkeypatch.setattr(os, "execv", fake_execv)
    with pytest.raises(_Started):
        cli.main(["ui"])
    (argv,) = seen
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[1:4] == ["-m", "mlflow", "ui"]
    assert "--backend-store-uri" in argv and str(workdir) in argv[argv.index("--backend-store-uri") + 1]
    assert "http://127.0.0.1:5000" in capsys.readouterr().out
