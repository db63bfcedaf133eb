"""Runs that explain themselves, read back with the MLflow client: system metrics (`system/*`), the
environment artifacts (installed distributions; Python, torch, CUDA, git, data digests) and stack tags on a
fit's run and a sweep trial's run; a crashed trial's traceback in its `logs/trial.log`; the sweep driver's
log on the parent run; asynchronous metric writes whose failure stops the fit at the next logging step.

(The tracking server that dies mid-run is tests/test_faults.py::test_tracking_server_stopped_mid_run.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
import yaml
from _experiment import tiny_config
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.async_logging.run_operations import RunOperations
from plexlab import api, run_environment, run_logger, run_logs, schema
from plexlab.errors import PlexlabError

FAST = {"system_metrics_interval": 0.2}


def read_artifact(client: MlflowClient, run_id: str, path: str, into: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(into))).read_text()


def assert_explains_itself(client: MlflowClient, run_id: str, data: Path, into: Path) -> dict:
    """system/* metrics, both environment artifacts with real content, and the stack tags."""
    run = client.get_run(run_id)
    system_metrics = [k for k in run.data.metrics if k.startswith(schema.SYSTEM_METRICS_PREFIX)]
    assert f"{schema.SYSTEM_METRICS_PREFIX}cpu_utilization_percentage" in system_metrics, run.data.metrics
    assert f"{schema.SYSTEM_METRICS_PREFIX}system_memory_usage_megabytes" in system_metrics
    into.mkdir(parents=True, exist_ok=True)
    requirements = read_artifact(client, run_id, "environment/requirements.txt", into).splitlines()
    assert f"torch=={torch.__version__}" in requirements
    assert any(line.startswith("mlflow==") for line in requirements)
    system = json.loads(read_artifact(client, run_id, "environment/system.json", into))
    assert system["torch"] == torch.__version__ and system["cuda"] == torch.version.cuda
    assert system["cpu_count"] == os.cpu_count() and system["python"]
    digest = system["data"]["data.path"]
    assert digest["path"] == str(data) and digest["kind"] == "folder" and digest["files"] == 4
    assert digest["sha256"] == run_environment.path_digest(data)["sha256"] and len(digest["sha256"]) == 64
    assert system["git"]["plexlab_source"] is None or len(system["git"]["plexlab_source"]["commit"]) == 40
    tags = run.data.tags
    assert tags[schema.TORCH_VERSION] == torch.__version__
    assert tags[schema.CUDA_VERSION] == (torch.version.cuda or "none")
    assert tags[schema.GPU_MODEL] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
    return system


def test_a_fit_records_system_metrics_and_its_environment(workdir: Path) -> None:
    cfg = tiny_config(workdir, trainer={"max_epochs": 3}, tracking=FAST)
    result = api.fit(cfg)
    client = MlflowClient(result.tracking_uri)
    assert_explains_itself(client, result.run_id, workdir / "graph", workdir / "read")
    # Written asynchronously, every epoch's points are there by the time the fit returns.
    assert [m.step for m in client.get_metric_history(result.run_id, "val/acc")] == [0, 1, 2]
    assert len(client.get_metric_history(result.run_id, "train/loss")) == 3
    assert client.get_run(result.run_id).info.status == "FINISHED"
    # A test run of its checkpoint is a run of its own, and records its environment too.
    tested = api.test(cfg, result.checkpoint)
    assert "test/acc" in client.get_run(tested.run_id).data.metrics
    assert_explains_itself(client, tested.run_id, workdir / "graph", workdir / "read-test")


def test_system_metrics_can_be_turned_off(workdir: Path) -> None:
    result = api.fit(tiny_config(workdir, tracking={"system_metrics": False}))
    metrics = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
    assert "val/acc" in metrics and not [k for k in metrics if k.startswith(schema.SYSTEM_METRICS_PREFIX)]


def test_git_state_without_a_repository_or_without_git(tmp_path: Path, monkeypatch) -> None:
    assert run_environment.git_state(tmp_path) is None
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("a")
    env = {f"GIT_{who}_{what}": "t" for who in ("AUTHOR", "COMMITTER") for what in ("NAME", "EMAIL")}
    subprocess.run(["git", "-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-qm", "a"], check=True, env={**os.environ, **env})
    clean = run_environment.git_state(tmp_path)
    assert clean is not None and len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "a.txt").write_text("b")
    assert run_environment.git_state(tmp_path)["dirty"] is True
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no git at all
    assert run_environment.git_state(tmp_path) is None


def test_a_big_file_is_digested_from_its_size_and_ends(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(run_environment, "FULL_DIGEST_BYTES", 1000)
    monkeypatch.setattr(run_environment, "SAMPLE_BYTES", 100)
    big = tmp_path / "big.bin"
    big.write_bytes(b"a" * 500 + b"b" * 1000 + b"c" * 500)
    method, first = run_environment.file_digest(big)
    assert method == "sha256-sampled"
    big.write_bytes(b"a" * 500 + b"x" * 1000 + b"c" * 500)  # the middle changed: the sample cannot tell
    os.utime(big, ns=(1, 1))
    assert run_environment.file_digest(big)[1] == first
    big.write_bytes(b"a" * 500 + b"x" * 1000 + b"c" * 499 + b"d")  # the last MiB changed: it can
    os.utime(big, ns=(2, 2))
    assert run_environment.file_digest(big)[1] != first


def test_a_failed_asynchronous_write_is_raised_at_the_next_check() -> None:
    pending = run_logger.PendingWrites()
    ok, failed = Future(), Future()
    ok.set_result(None)
    failed.set_exception(ConnectionError("Connection refused\nmore lines"))

    pending.add(RunOperations([ok, failed]))
    with pytest.raises(MlflowException, match=r"^a metric write failed: Connection refused$"):
        pending.check()
    pending.check()  # reported once; nothing pending any more
    assert len(pending) == 0


def test_an_unanswered_asynchronous_write_is_a_stall(monkeypatch) -> None:
    monkeypatch.setattr(run_logger, "STALL_S", 0.05)
    pending = run_logger.PendingWrites()

    pending.add(RunOperations([Future()]))  # never answered
    with pytest.raises(MlflowException, match="not answered"):
        pending.flush(timeout=0.05)


@pytest.mark.ray
def test_sweep_trials_and_driver_leave_their_logs(workdir: Path) -> None:
    """Two grid trials, one of which crashes (a negative learning rate that the optimizer refuses): the
    crashed trial's child run has the traceback in logs/trial.log, the other trial's run explains itself,
    and the parent run has the driver's log."""
    config = tiny_config(workdir, trainer={"max_epochs": 2, "accelerator": "cpu"}, tracking=FAST)
    config["sweep"] = {
        "space": {"model.lr": {"choice": [0.01, -1.0]}},
        "search": {"name": "grid"},
        "scheduler": {"name": "fifo"},
        "resources": {"cpu": 1},
        "max_failures": 0,
        "storage": str(workdir / "sweeps"),
    }
    path = workdir / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        result = api.sweep(path)
        uri, parent_id = result.tracking_uri, result.parent_run_id
    except PlexlabError:  # a sweep whose trials failed may say so; the runs are what this test reads
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        parent_id = None
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parent = next(r for r in runs if r.data.tags.get(schema.KIND) == schema.SWEEP_KIND)
    assert parent_id in (None, parent.info.run_id)
    kids = {float(r.data.params["model.lr"]): r for r in runs if schema.PARENT_RUN_ID in r.data.tags}
    assert set(kids) == {0.01, -1.0}, {k: r.info.status for k, r in kids.items()}

    crashed = kids[-1.0]
    assert crashed.info.status == "FAILED"
    log = read_artifact(client, crashed.info.run_id, "logs/trial.log", workdir / "crashed")
    assert "Traceback (most recent call last)" in log and "Invalid learning rate: -1.0" in log, log[-3000:]
    assert f"trial starts in run {crashed.info.run_id}" in log

    good = kids[0.01]
    assert good.info.status == "FINISHED"
    assert_explains_itself(client, good.info.run_id, workdir / "graph", workdir / "good")
    log = read_artifact(client, good.info.run_id, "logs/trial.log", workdir / "good")
    assert "plexlab: finished" in log and "Traceback" not in log

    driver = read_artifact(client, parent.info.run_id, "logs/driver.log", workdir / "parent")
    assert driver.strip(), "the driver's log is empty"
    assert "plexlab: finished" in driver or "plexlab: failed" in driver


class _Uploads:
    """A stand-in for tracking.Run that keeps what would be uploaded."""

    run_id = "r1"

    def __init__(self) -> None:
        self.uploaded: list[tuple[str, str]] = []

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self.uploaded.append((f"{subdir}/{Path(path).name}", Path(path).read_text()))


def test_a_trial_log_holds_logging_output_and_the_traceback_and_is_uploaded_however_it_ends(tmp_path) -> None:
    import logging

    run = _Uploads()
    with pytest.raises(RuntimeError, match="boom"), run_logs.trial_log(run, tmp_path / "trial"):
        logging.getLogger("plexlab.somewhere").info("an info line from plexlab")
        print("a line on stdout")
        raise RuntimeError("boom in epoch 2")
    ((name, text),) = run.uploaded
    assert name == "logs/trial.log"
    assert "INFO plexlab.somewhere: an info line from plexlab" in text and "a line on stdout" in text
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom in epoch 2" in text
    # A retried trial appends to its file: the crash stays in the log the retry uploads.
    with run_logs.trial_log(run, tmp_path / "trial"):
        print("the retry")
    text = run.uploaded[-1][1]
    assert "boom in epoch 2" in text and "the retry" in text and text.rstrip().endswith("plexlab: finished")
    assert not isinstance(sys.stdout, run_logs._Tee) and not isinstance(sys.stderr, run_logs._Tee)
