"""Every experiment file in sweeps/ trains through the real runner: `plexlab.api.fit` with MLflow on (the
embedded store), for one short epoch on its real data. A new file is covered without a new test.

Only what would not fit a CPU test changes: one epoch of two batches, and the protein models' ESM-2 and GNN
widths (the files name the 650M model). A sweep file trains its experiment (its sweep section is the sweep's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from plexlab import api, schema, tracking
from plexlab.config_files import read_composed

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
SHORT = {
    "max_epochs": 1,
    "check_val_every_n_epoch": 1,  # a file that validates every 10 epochs would not in one
    "limit_train_batches": 2,
    "limit_val_batches": 2,
    "limit_test_batches": 2,
}
CPU_SIZED = {
    "protein_mmcl": {"esm_layers": 2, "esm_dim": 32, "esm_heads": 2, "gnn_dims": [16, 16], "proj_dim": 16},
    "protein_function": {"esm_layers": 2, "esm_dim": 32, "esm_heads": 2, "gnn_dims": [16, 16]},
}


def _absolute(value: Any) -> Any:
    """The files name data relative to the repository root, where the README runs them."""
    if isinstance(value, str) and value.startswith("../"):
        return str((ROOT / value).resolve())
    return value


def short_run(path: Path, workdir: Path) -> Path:
    raw, _ = read_composed(path)  # a sweep file merged over the experiment file it names
    raw.pop("sweep", None)
    raw["data"] = {k: _absolute(v) for k, v in raw["data"].items()}
    raw["model"] = {k: _absolute(v) for k, v in raw["model"].items()}
    raw["model"].update(CPU_SIZED.get(raw["model"]["name"], {}))
    raw["trainer"] = {**raw.get("trainer", {}), **SHORT, "accelerator": "cpu"}
    missing = [v for v in (*raw["data"].values(), *raw["model"].values()) if _is_missing_shared(v)]
    if missing:
        pytest.skip(f"{path.name} reads {missing[0]}, which is not here (../shared/data beside the project)")
    out = workdir / path.name
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def _is_missing_shared(value: Any) -> bool:
    return isinstance(value, str) and "/shared/data/" in value and not Path(value).exists()


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_experiment_file_trains_through_the_runner(path: Path, workdir: Path, one_torch_thread) -> None:
    result = api.fit(short_run(path, workdir))
    assert result.run_id is not None and result.metrics, result
    run = tracking.Run.attach(result.tracking_uri, result.run_id).record()
    assert run.status == "FINISHED", run.tags.get(schema.ERROR)
    assert run.tags[schema.KIND] == schema.FIT and run.params, run.tags
    assert any(k.startswith("test/") for k in run.metrics), sorted(run.metrics)
    assert result.primary_metric in run.metrics, (result.primary_metric, sorted(run.metrics))
