"""`plexlab fit --resume`: a fit killed mid-run (a real process, SIGKILL or SIGTERM) continues from its last
checkpoint into the same MLflow run, every epoch logged once, and ends FINISHED with test metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from _hypergraph_files import write_graph
from _processes import start_fit as start_plexlab_fit
from _processes import stop, wait_for
from plexlab import cli, schema

EPOCHS = 30  # enough that a kill after the first epochs lands mid-run, with metrics written asynchronously


def write_fit(workdir: Path, name: str, epochs: int = EPOCHS) -> Path:
    config = {
        "name": name,
        "seed": 0,
        "model": {"name": "hypergcl", "hidden": 8, "dropout": 0.0},
        "data": {"name": "hypergraph", "path": str(write_graph(workdir / "graph"))},
        "trainer": {"max_epochs": epochs, "accelerator": "cpu"},
    }
    path = workdir / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_fit(workdir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    return start_plexlab_fit(workdir, env)


def client_of(workdir: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def runs_of(client: Any, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def wait_for_epochs(fit: subprocess.Popen, client: Any, experiment: str, epochs: int) -> str:
    def logged() -> str | None:
        runs = runs_of(client, experiment)
        if runs and len(client.get_metric_history(runs[0].info.run_id, "val/acc")) >= epochs:
            return runs[0].info.run_id
        return None

    return wait_for(logged, 180, f"{epochs} epochs of {experiment}", every=0.2, process=fit)


def assert_one_finished_run_with_each_epoch_once(client: Any, experiment: str) -> Any:
    runs = runs_of(client, experiment)
    assert len(runs) == 1, [r.info.status for r in runs]
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "FINISHED"
    assert schema.ERROR not in run.data.tags  # the interrupted attempt's reason is gone with it
    assert run.data.tags[schema.RESUMED_FROM].endswith("last.ckpt")
    for key in ("val/acc", "val/loss", "train/loss"):  # (Lightning logs `epoch` beside each of them)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at some step: {sorted(steps)}"
    val_steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
    assert len(val_steps) == EPOCHS  # one validation per epoch, none lost, none repeated
    assert "test/acc" in run.data.metrics and schema.best("val/acc") in run.data.metrics
    return run


def test_a_fit_killed_mid_run_resumes_into_the_same_run(workdir: Path, one_torch_thread, capsys) -> None:
    write_fit(workdir, "killed")
    client = client_of(workdir)
    fit = start_fit(workdir)
    try:
        run_id = wait_for_epochs(fit, client, "killed", 3)
        os.killpg(fit.pid, signal.SIGKILL)  # no chance to save anything: only the epochs' last.ckpt is left
        fit.wait(timeout=30)
    finally:
        stop(fit)
    assert client.get_run(run_id).info.status == "RUNNING"  # as a killed process leaves it
    assert cli.main(["fit", "exp.yaml", "--resume", "last"]) == 0, capsys.readouterr().err[-3000:]
    run = assert_one_finished_run_with_each_epoch_once(client, "killed")
    assert run.info.run_id == run_id


def test_sigterm_saves_a_checkpoint_that_resume_continues(workdir: Path, one_torch_thread, capsys) -> None:
    write_fit(workdir, "preempted")
    client = client_of(workdir)
    fit = start_fit(workdir)
    try:
        run_id = wait_for_epochs(fit, client, "preempted", 2)
        last = workdir / "plexlab_runs" / "preempted" / run_id / "checkpoints" / "last.ckpt"
        before = last.stat().st_mtime_ns
        fit.send_signal(signal.SIGTERM)
        _, err = fit.communicate(timeout=60)
    finally:
        stop(fit)
    assert fit.returncode == 143, err[-3000:]
    assert client.get_run(run_id).info.status == "KILLED"
    assert last.stat().st_mtime_ns > before  # written on the way out, not only at the last epoch's end
    assert cli.main(["fit", "exp.yaml", "--resume", run_id]) == 0, capsys.readouterr().err[-3000:]
    assert_one_finished_run_with_each_epoch_once(client, "preempted")


@pytest.mark.parametrize("resume", ["last", "0123456789abcdef"])
def test_nothing_to_resume_is_one_line_and_exit_2(workdir: Path, resume: str, capsys) -> None:
    write_fit(workdir, "fresh", epochs=1)
    assert cli.main(["fit", "exp.yaml"]) == 0  # a FINISHED run: not resumable
    finished = runs_of(client_of(workdir), "fresh")[0].info.run_id
    capsys.readouterr()
    for target, message in ((resume, "no"), (finished, "is FINISHED: nothing to continue")):
        assert cli.main(["fit", "exp.yaml", "--resume", target]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--resume" in err and message in err, err
    assert len(runs_of(client_of(workdir), "fresh")) == 1


def test_resume_refuses_another_config(workdir: Path, capsys) -> None:
    write_fit(workdir, "changed", epochs=1)
    assert cli.main(["fit", "exp.yaml"]) == 0
    client = client_of(workdir)
    run_id = runs_of(client, "changed")[0].info.run_id
    client.set_terminated(run_id, "KILLED")  # as a preempted fit leaves it
    capsys.readouterr()
    assert cli.main(["fit", "exp.yaml", "--resume", run_id, "--set", "model.hidden=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trained another config" in err, err


# ---- the SLURM script requeues a preempted fit and resumes it ------------------------------------------

SLURM = Path(__file__).resolve().parents[1] / "docker" / "cluster" / "slurm.sbatch"

SHIMS = {
    # Records its arguments; with SIM_SLEEP it trains until SIGTERM, which it records too.
    "plexlab": """#!/bin/bash
        printf '%s\\n' "$@" > "$SIM_OUT/plexlab.args"
        if [ -n "${SIM_SLEEP:-}" ]; then
            trap 'echo term > "$SIM_OUT/plexlab.term"; exit 143' TERM
            touch "$SIM_OUT/plexlab.started"
            while :; do sleep 0.1; done
        fi
        """,
    "scontrol": """#!/bin/bash
        printf '%s\\n' "$@" > "$SIM_OUT/scontrol.args"
        """,
}


def slurm_fit(tmp_path: Path, **env: str) -> subprocess.Popen:
    shims = tmp_path / "bin"
    shims.mkdir(exist_ok=True)
    for name, body in SHIMS.items():
        (shims / name).write_text(textwrap.dedent(body))
        (shims / name).chmod(0o755)
    venv = Path(sys.executable).parent
    full = {
        "PATH": f"{shims}{os.pathsep}{venv}{os.pathsep}{os.environ['PATH']}",
        "PLEXLAB_SHARED": str(tmp_path / "shared"),
        "PLEXLAB_COMMAND": "fit",
        "SLURM_JOB_ID": "42",
        "SIM_OUT": str(tmp_path),
        **env,
    }
    return subprocess.Popen(
        ["bash", str(SLURM), "exp.yaml", "--set", "model.lr=0.01"],
        env=full,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_slurm_script_asks_to_be_requeued_and_signalled() -> None:
    text = SLURM.read_text()
    assert "#SBATCH --requeue\n" in text and "#SBATCH --signal=B:TERM@" in text


@pytest.mark.parametrize(("restarts", "resume"), [("0", []), ("2", ["--resume", "last"])])
def test_a_requeued_slurm_fit_resumes_the_last_run(tmp_path: Path, restarts: str, resume: list[str]) -> None:
    job = slurm_fit(tmp_path, SLURM_RESTART_COUNT=restarts)
    out, err = job.communicate(timeout=60)
    assert job.returncode == 0, out + err
    args = (tmp_path / "plexlab.args").read_text().split("\n")[:-1]
    assert args == ["fit", "exp.yaml", "--set", "model.lr=0.01", *resume]


def test_sigterm_to_a_slurm_fit_reaches_plexlab_and_requeues_the_job(tmp_path: Path) -> None:
    job = slurm_fit(tmp_path, SIM_SLEEP="1")
    try:
        wait_for(lambda: (tmp_path / "plexlab.started").exists(), 60, "the fit to start", 0.1, process=job)
        job.send_signal(signal.SIGTERM)  # to the batch shell only, as --signal=B:TERM sends it
        out, err = job.communicate(timeout=60)
    finally:
        stop(job)
    assert job.returncode == 143, out + err
    assert (tmp_path / "plexlab.term").read_text().strip() == "term"
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "42"]
