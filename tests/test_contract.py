"""The contract between the platform and the models (plexlab.contract), and the platform's own layout rules.

The registry checks every class it loads, built-in or plugin; a misfit is one line naming the class. Paths
are declared by annotation; the CLI reaches the package only through plexlab.api; tag names live in
plexlab.schema.
"""

from __future__ import annotations

import ast
import re
from importlib.metadata import EntryPoint
from pathlib import Path

import lightning.pytorch as pl
import pytest
from _experiment import tiny_config, write_experiment
from plexlab import cli, contract, registry, schema
from plexlab.config import load, path_role
from plexlab.datamodules.paths import OutputPath
from plexlab.errors import ConfigError, RegistryError

PLATFORM = Path(__file__).resolve().parents[1] / "platform"


# ---- classes a plugin might register ------------------------------------------------------------------


class NoPrimaryMetric(pl.LightningModule):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()


class BadMode(pl.LightningModule):
    primary_metric = "val/acc"
    primary_mode = "higher"


class NotAModule:
    primary_metric = "val/acc"
    primary_mode = "max"


class NoModelKwargs(pl.LightningDataModule):
    def __init__(self, path: str = "") -> None:
        super().__init__()


class RefusesItsSettings(pl.LightningModule):
    """Raises ValueError for settings that do not fit together, as real models do."""

    primary_metric = "val/acc"
    primary_mode = "max"

    def __init__(self, in_dim: int, num_classes: int, heads: int = 2, hidden: int = 5) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")


class TakesPaths(pl.LightningModule):
    primary_metric = "val/acc"
    primary_mode = "max"

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        weights: Path | str | None = None,
        cache: OutputPath | str | None = None,
        note_path: str = "",  # named like a path, typed as text: not a path
    ) -> None:
        super().__init__()


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch):
    """Register test classes as entry-point plugins: {group: {name: "module:Class"}}."""

    def install(groups: dict[str, dict[str, str]]) -> None:
        def entry_points(group: str) -> list[EntryPoint]:
            return [EntryPoint(n, v, group) for n, v in groups.get(group, {}).items()]

        monkeypatch.setattr(registry, "entry_points", entry_points)
        _clear_registry()

    yield install
    _clear_registry()


def _clear_registry() -> None:
    for fn in (registry.models, registry.datamodules, registry.model_class, registry.datamodule_class):
        fn.cache_clear()


# ---- the registry checks the contract ------------------------------------------------------------------


def test_every_built_in_class_fits_the_contract() -> None:
    for name in registry.MODELS:
        metric, mode = contract.primary(registry.model_class(name))
        assert metric.startswith("val/") and mode in ("min", "max")
    for name in registry.DATAMODULES:
        assert callable(registry.datamodule_class(name).model_kwargs)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "test_contract:NoPrimaryMetric",
            r"model 'plug' \(test_contract\.NoPrimaryMetric\) has no primary_metric",
        ),
        ("test_contract:BadMode", r"primary_mode must be 'min' or 'max', not 'higher'"),
        ("test_contract:NotAModule", r"is not a lightning\.pytorch\.LightningModule"),
    ],
)
def test_registry_refuses_a_model_that_does_not_fit(plugins, target: str, message: str) -> None:
    plugins({"plexlab.models": {"plug": target}})
    with pytest.raises(RegistryError, match=message) as caught:
        registry.model_class("plug")
    assert "\n" not in str(caught.value)


def test_registry_refuses_a_data_module_without_model_kwargs(plugins) -> None:
    plugins({"plexlab.datamodules": {"plugdata": "test_contract:NoModelKwargs"}})
    with pytest.raises(RegistryError, match=r"has no model_kwargs\(\) method"):
        registry.datamodule_class("plugdata")


def test_a_plugin_that_reuses_a_built_in_name_is_refused(plugins) -> None:
    plugins({"plexlab.models": {"hypergcl": "test_contract:RefusesItsSettings"}})
    with pytest.raises(RegistryError, match=r"registers 'hypergcl' in plexlab\.models, a built-in name"):
        registry.model_class("hypergcl")


def test_a_refused_model_is_one_line_and_exit_2_through_the_cli(plugins, workdir, capsys) -> None:
    plugins({"plexlab.models": {"plug": "test_contract:NoPrimaryMetric"}})
    config = write_experiment(workdir, {"name": "plug"})
    assert cli.main(["fit", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no primary_metric" in err


# ---- constructor errors are settings, not crashes -------------------------------------------------------


def test_a_value_error_in_a_model_constructor_names_the_key(plugins, workdir, capsys) -> None:
    plugins({"plexlab.models": {"picky": "test_contract:RefusesItsSettings"}})
    config = write_experiment(workdir, {"name": "picky", "heads": 2, "hidden": 5})
    assert cli.main(["fit", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(
        r"plexlab: error: .*experiment\.yaml: model\.hidden: hidden \(5\) must be divisible.*", err
    )
    assert _runs_left_running(workdir) == []


# ---- paths are declared by annotation -------------------------------------------------------------------


def test_path_roles_come_from_annotations() -> None:
    assert path_role(Path) == "input"
    assert path_role(Path | str | None) == "input"
    assert path_role(OutputPath | str | None) == "output"
    assert path_role(str) is None
    assert path_role(str | None) is None


def test_path_arguments_are_resolved_and_checked_by_their_annotation(plugins, workdir) -> None:
    plugins({"plexlab.models": {"paths": "test_contract:TakesPaths"}})
    (workdir / "w.pt").write_bytes(b"")
    cfg = load(
        tiny_config(workdir, {"name": "paths", "weights": "w.pt", "cache": "not/yet", "note_path": "x"})
    )
    assert cfg.model["weights"] == str((workdir / "w.pt").resolve())
    assert cfg.model["cache"] == str((workdir / "not/yet").resolve())  # may be created: need not exist
    assert cfg.model["note_path"] == "x"  # a string, whatever its name
    with pytest.raises(ConfigError, match=r"model\.weights: no such file or directory: missing\.pt"):
        load(tiny_config(workdir, {"name": "paths", "weights": "missing.pt"}))


def test_protein_functions_pretrained_checkpoint_is_a_declared_path() -> None:
    params = registry.init_parameters(registry.model_class("protein_function"))
    assert path_role(params["pretrained_ckpt"].annotation) == "input"
    assert path_role(
        registry.init_parameters(registry.datamodule_class("protein"))["cache_dir"].annotation
    ) == ("output")


# ---- layout rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cli.py", "cli_jobs.py"])
def test_the_cli_reaches_the_package_only_through_the_api(name: str) -> None:
    tree = ast.parse((PLATFORM / name).read_text())
    imported = {
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    from_plexlab = {
        f"{n.module}.{a.name}" if n.module == "plexlab" else n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("plexlab")
        for a in n.names
    }
    # cli.py registers the job commands of cli_jobs.py, which keeps to the same rule
    assert from_plexlab <= {"plexlab.api", "plexlab.errors", "plexlab.cli_jobs"}, from_plexlab
    assert not {
        m for m in imported if m and m.startswith("plexlab") and m not in ("plexlab", "plexlab.errors")
    }


def test_run_tag_names_are_written_only_in_the_schema_module() -> None:
    names = {v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str) and "." in v}
    assert "plexlab.kind" in names and "mlflow.parentRunId" in names
    for path in PLATFORM.glob("*.py"):
        if path.name == "schema.py":
            continue
        text = path.read_text()
        found = [n for n in names if f'"{n}"' in text or f"'{n}'" in text or f"`{n}`" in text]
        assert not found, f"{path.name} spells tag names itself: {found}"


def test_no_platform_file_does_more_than_one_files_worth_of_jobs() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PLATFORM.glob("*.py")}
    assert max(sizes.values()) <= 350, sizes


# ---- helpers ----------------------------------------------------------------------------------------------


def _runs_left_running(workdir: Path) -> list[str]:
    db = workdir / "mlflow.db"
    if not db.exists():
        return []
    from plexlab import tracking

    uri = tracking.resolve_uri(None)
    return [r.run_id for r in tracking.search(uri, "tiny") if r.status == "RUNNING"]
