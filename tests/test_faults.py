"""Faults: a damaged disk cache is rebuilt to what a cold build gives; a tracking server that dies mid-run
stops the run with a short message and keeps every metric logged before it died.

The protein data module's residue-graph cache is the only cache a data module writes (the image-text
vocabulary is written only when asked, and the simulator writes its output, not a cache).

The other faults of the fault suite live with the sweeps, since they need Ray (tests/test_sweep.py):
- a trial's worker process killed mid-trial is retried from its last checkpoint:
  `test_killed_trial_worker_is_retried_from_its_checkpoint`;
- the sweep driver killed, then `plexlab sweep --resume`: finished trials are kept and the interrupted one
  continues from its checkpoint: `test_sweep_resumes_after_the_driver_is_killed`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from _hypergraph_files import write_graph
from _processes import free_port, start_fit, start_mlflow_server, stop, wait_for
from _protein_files import plain, write_pdb
from plexlab import schema
from plexlab.datamodules.protein.datamodule import ProteinDataModule

# ---- (a) the protein residue-graph cache -------------------------------------------------------------


@pytest.fixture
def structures(tmp_path: Path) -> Path:
    folder = tmp_path / "structures"
    folder.mkdir()
    write_pdb(folder / "1abc.pdb", plain(30))
    write_pdb(folder / "2def.pdb", plain(24, name="GLY"), chain="B")
    write_pdb(folder / "3ghi.pdb", [("TRP", i + 1, " ", False, " ") for i in range(18)])
    return folder


def built(folder: Path, cache: Path) -> ProteinDataModule:
    dm = ProteinDataModule(path=str(folder), cache_dir=str(cache), val_fraction=0.0, test_fraction=0.0)
    dm.setup("fit")
    return dm


def graphs_of(dm: ProteinDataModule) -> list[tuple]:
    keys = ("x", "pos", "seq_index", "edge_index", "edge_type")
    return [(it["id"], it["sequence"], *(it["graph"][k] for k in keys)) for it in dm.items]


def assert_same(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b) > 0
    for left, right in zip(a, b, strict=True):
        assert left[:2] == right[:2]
        for x, y in zip(left[2:], right[2:], strict=True):
            assert torch.equal(x, y)


def corrupt_truncate(entries: list[Path]) -> None:
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])


def corrupt_empty(entries: list[Path]) -> None:
    for entry in entries:
        entry.write_bytes(b"")


def corrupt_garbage(entries: list[Path]) -> None:
    for entry in entries:
        entry.write_bytes(os.urandom(entry.stat().st_size))


def corrupt_out_of_range_edge(entries: list[Path]) -> None:
    # Loads fine, but an edge points past the last residue: only the validation on load can tell.
    for entry in entries:
        payload = torch.load(entry, weights_only=True)
        payload["graphs"][0]["edge_index"][0, 0] = 10**6
        torch.save(payload, entry)


def corrupt_swapped(entries: list[Path]) -> None:
    # Whole, valid entries of other files under these names (a copy gone wrong): their keys say so.
    contents = [entry.read_bytes() for entry in entries]
    for entry, other in zip(entries, contents[1:] + contents[:1], strict=True):
        entry.write_bytes(other)


@pytest.mark.parametrize(
    "corrupt",
    [corrupt_truncate, corrupt_empty, corrupt_garbage, corrupt_out_of_range_edge, corrupt_swapped],
    ids=lambda f: f.__name__.removeprefix("corrupt_"),
)
def test_damaged_graph_cache_is_rebuilt_like_a_cold_build(structures, tmp_path, corrupt) -> None:
    cold = graphs_of(built(structures, tmp_path / "cold"))
    cache = tmp_path / "cache"
    first = built(structures, cache)
    assert first.cache.misses == 3 and first.cache.rebuilt == 0
    entries = sorted(cache.glob("*.pt"))
    assert len(entries) == 3 and not list(cache.glob(".tmp-*"))
    corrupt(entries)
    again = built(structures, cache)
    assert again.cache.rebuilt == 3 and again.cache.hits == 0
    assert_same(graphs_of(again), cold)
    # The rebuilt entries were written back whole: the next run reads all of them.
    third = built(structures, cache)
    assert (third.cache.hits, third.cache.misses) == (3, 0)
    assert_same(graphs_of(third), cold)
    # And the batches a model sees are the cold build's (every chain: with fractions 0 there is no val split).
    for a, b in zip(
        again.predict_dataloader(), built(structures, tmp_path / "cold").predict_dataloader(), strict=True
    ):
        assert torch.equal(a.a.tokens, b.a.tokens) if hasattr(a, "a") else torch.equal(a.tokens, b.tokens)


def test_interrupted_cache_write_leaves_nothing_to_trust(structures, tmp_path, monkeypatch) -> None:
    """A write that dies half-way (disk full, killed) leaves no entry and no temporary file behind."""
    cache = tmp_path / "cache"
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        built(structures, cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(torch, "save", real_save)
    # A stray temporary file from a killed process is not mistaken for an entry.
    (cache / ".tmp-deadbeef.pt").write_bytes(b"partial")
    dm = built(structures, cache)
    assert dm.cache.misses == 3 and dm.cache.rebuilt == 0
    assert_same(graphs_of(dm), graphs_of(built(structures, tmp_path / "cold")))


# ---- (b) the MLflow tracking server dies mid-run ------------------------------------------------------


def metrics_of(client: Any, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a run with its full history, as the tracking store holds it."""
    keys = list(client.get_run(run_id).data.metrics)
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}


def start_endless_fit(workdir: Path, name: str, uri: str | None, env: dict[str, str]) -> subprocess.Popen:
    """`plexlab fit` of a tiny hypergraph model with far more epochs than it will live, in its own group."""
    config = {
        "name": name,
        "seed": 0,
        "model": {"name": "hypergcl", "hidden": 8, "dropout": 0.0},
        "data": {"name": "hypergraph", "path": str(write_graph(workdir / "graph"))},
        "trainer": {"max_epochs": 100000, "accelerator": "cpu"},
        "tracking": {"uri": uri},
    }
    (workdir / "exp.yaml").write_text(yaml.safe_dump(config))
    return start_fit(workdir, env)


def test_tracking_server_stopped_mid_run(workdir: Path) -> None:
    """`plexlab fit` against a real `mlflow server`, which is stopped while the model trains: the command
    stops with status 2 and one line naming the server (MLflow's retries are turned off here, so it fails
    at once instead of retrying for minutes), and a server started again on the same store serves every
    metric point that was logged before the first one died."""
    from mlflow.tracking import MlflowClient

    store = workdir / "server"
    store.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    server = fit = None
    try:
        server = start_mlflow_server(port, store, workdir / "server.log")
        fit = start_endless_fit(workdir, "server-dies", uri, env)  # the server is stopped while it trains
        client = MlflowClient(uri)
        run_id = wait_for_epochs(fit, client, "server-dies", 3)
        before = metrics_of(client, run_id)
        assert {"val/acc", "train/loss"} <= set(before) and len(before["val/acc"]) >= 3
        params = client.get_run(run_id).data.params
        assert params["model.hidden"] == "8"

        stop(server)
        stopped = time.monotonic()
        exited: list[float] = []  # when the fit's process ended, seen while the server restarts
        watcher = threading.Thread(target=lambda: (fit.wait(), exited.append(time.monotonic())), daemon=True)
        watcher.start()
        server = None
        # Started again on the same store, on another port so that the dying fit cannot reach it: the
        # restart overlaps with the fit's exit instead of following it.
        port = free_port()
        server = start_mlflow_server(port, store, workdir / "server.log")
        try:
            _, err = fit.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("plexlab fit kept running for 90 s after its tracking server died")
        watcher.join(5)
        # Metrics are written asynchronously: a failed write stops the fit at its next logging step.
        took = exited[0] - stopped if exited else float("inf")
        assert took < 30, f"the fit ran {took:.0f} s on a dead server"

        client = MlflowClient(f"http://127.0.0.1:{port}")
        after = metrics_of(client, run_id)
        for key, points in before.items():
            assert set(points) <= set(after[key]), f"{key}: points logged before the stop were lost"
        assert client.get_run(run_id).data.params == params
        # (The run itself stays RUNNING: nobody could tell the dead server that it ended.)

        lines = err.strip().splitlines()
        assert fit.returncode == 2, err[-3000:]
        last = lines[-1] if lines else ""
        assert last.startswith("plexlab: error: MLflow tracking at ") and uri in last, err[-3000:]
        assert "failed during the run" in last and len(last) < 600, last
        # The failed end-of-run updates are one warning line each, not tracebacks before the error.
        assert "Traceback" not in err, f"{len(lines)} lines on stderr:\n" + "\n".join(lines[:40])
    finally:
        stop(fit)
        stop(server)


# ---- (c) a cluster scheduler terminates the run -------------------------------------------------------


def test_sigterm_ends_the_run_killed(workdir: Path) -> None:
    """SIGTERM (Slurm's preemption, `scancel`, `kill`) while `plexlab fit` trains: the run ends KILLED with
    the reason, keeps what it logged, and the command exits 143, not 0, so a scheduler sees it was cut."""
    from mlflow.tracking import MlflowClient

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    fit = start_endless_fit(workdir, "terminated", None, env)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    try:
        run_id = wait_for_epochs(fit, client, "terminated", 3)
        fit.send_signal(signal.SIGTERM)
        _, err = fit.communicate(timeout=60)
    finally:
        if fit.poll() is None:
            stop(fit)
    run = client.get_run(run_id)
    assert fit.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == "plexlab: terminated (SIGTERM)"
    assert run.info.status == "KILLED" and run.data.tags[schema.ERROR] == "terminated by SIGTERM"
    assert len(client.get_metric_history(run_id, "val/acc")) >= 3


def wait_for_epochs(fit: subprocess.Popen, client: Any, experiment: str, epochs: int) -> str:
    """The id of the experiment's run once it has logged `epochs` values of val/acc; fails at once if the
    fit ends first."""

    def logged() -> str | None:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "val/acc")) >= epochs:
            return runs[0].info.run_id
        return None

    return wait_for(logged, 180, f"{epochs} epochs of {experiment}", every=0.3, process=fit)
