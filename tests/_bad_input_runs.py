"""Running the bad-input corpus: build a case's experiment in a fresh folder, run `plexlab fit` through the
CLI in this process, and check the one-line error, exit status 2 and that no MLflow run was left."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from plexlab import cli

SINGLE_CELL_MODEL = {"name": "unitednet", "hidden_dims": [8], "latent_dim": 4, "projector_dim": 4}


def experiment(model: dict[str, Any], data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "bad-input",
        "seed": 0,
        "model": dict(model),
        "data": data,
        "trainer": {"max_epochs": 1, "accelerator": "cpu"},
        **extra,
    }


# A case: build(tmp) -> (experiment dict or YAML text, strings the error line must contain[, extra argv]).
Built = tuple[Any, list[str]] | tuple[Any, list[str], list[str]]


def single_cell(path: Path, **kw: Any) -> dict[str, Any]:
    return experiment(SINGLE_CELL_MODEL, {"name": "single_cell", "path": str(path), **kw})


def runs_in_store(workdir: Path) -> list[Any]:
    """Every run in the working directory's embedded MLflow store (none when the store was never created)."""
    if not (workdir / "mlflow.db").exists():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids)) if ids else []


def run_bad(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    build: Callable[[Path], Built],
    command: str = "fit",
) -> str:
    built = build(workdir)
    config, needles, argv = (*built, [])[:3] if len(built) == 2 else built
    path = workdir / "exp.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    status = cli.main([command, str(path), *argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    (line,) = lines
    assert line.startswith("plexlab: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    runs = runs_in_store(workdir)
    assert [r.info.status for r in runs] == [], "a bad input must not leave an MLflow run"
    return line
