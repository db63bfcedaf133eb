"""Sweeps launched as Ray jobs and as notebook handles: `plexlab submit` to a real Ray head (token
authentication on, its job server on 127.0.0.1), followed to the end, stopped mid-sweep and resumed with one
MLflow run per trial; `api.submit` and `api.sweep(wait=False)` handles; one-line errors for a wrong address,
a server that is not Ray's and a refused token.

One head serves the module; it and every sweep process are stopped by pid, never by name.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from _hypergraph_files import write_graph
from _processes import stop, wait_for
from _ray_head import RayHead, start_ray_head, stop_ray_head
from mlflow.tracking import MlflowClient
from plexlab import api, cli, schema

pytestmark = pytest.mark.ray

# Trials the tests stop midway: 2,000 nodes make an epoch about 0.1 s, so a trial spends seconds between its
# first checkpoint (epoch 2) and its end.
MIDWAY = {"epochs": 30, "nodes": 2000}


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    started = start_ray_head(tmp_path_factory.mktemp("ray-head"))
    try:
        yield started
    finally:
        stop_ray_head(started)


def write_sweep(folder: Path, name: str, *, epochs: int = 2, nodes: int = 60, store: bool = True) -> Path:
    """sweeps/<name>.yaml naming its experiment file ../experiments/<name>.yaml with `base:` (the job
    uploads both); an absolute SQLite store and sweep storage in `folder`, which the job reaches too."""
    graph = folder / "graph"
    if not graph.exists():
        write_graph(graph, n=nodes)
    experiment = {
        "name": name,
        "seed": 0,
        "model": {"name": "hypergcl", "hidden": 16, "dropout": 0.0},
        "data": {"name": "hypergraph", "path": str(graph)},
        "trainer": {"max_epochs": epochs, "accelerator": "cpu"},
    }
    if store:
        experiment["tracking"] = {"uri": f"sqlite:///{folder / 'mlflow.db'}"}
    sweep = {
        "base": f"../experiments/{name}.yaml",
        "sweep": {
            "num_samples": 2,
            "max_concurrent": 1,
            "checkpoint_every": 2,
            "space": {"model.lr": {"loguniform": [1.0e-3, 3.0e-2]}},
            "scheduler": {"name": "fifo"},
            "resources": {"cpu": 1},
            "storage": str(folder / "sweeps"),
        },
    }
    for sub, body in (("experiments", experiment), ("sweeps", sweep)):
        (folder / sub).mkdir(exist_ok=True)
        (folder / sub / f"{name}.yaml").write_text(yaml.safe_dump(body))
    return folder / "sweeps" / f"{name}.yaml"


def runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    """(parent runs, trial runs) of an experiment."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return [], []
    every = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in every if r.data.tags.get(schema.KIND) == "sweep"]
    return parents, [r for r in every if schema.PARENT_RUN_ID in r.data.tags]


def midway(client: MlflowClient, experiment: str) -> list:
    """Trial runs RUNNING past their first checkpoint (epoch 2), with epochs to spare."""
    _, trials = runs(client, experiment)
    return [
        t
        for t in trials
        if t.info.status == "RUNNING" and len(client.get_metric_history(t.info.run_id, "val/acc")) >= 4
    ]


def plexlab(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_stop_and_resume_a_sweep_job_from_the_cli(workdir, head, capsys):
    config = write_sweep(workdir, "job-sweep", **MIDWAY)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    client.search_experiments(max_results=1)  # the store's tables first: polling a new store races them
    cluster = ["--address", head.address, "--token-file", str(head.token_file)]

    code, out, err = plexlab(capsys, "submit", str(config), *cluster)
    assert code == 0, err
    first = re.search(r"submitted (\S+):", out).group(1)
    wait_for(lambda: midway(client, "job-sweep"), 240, "a trial midway", every=0.5)
    code, out, err = plexlab(capsys, "stop", first, *cluster)
    assert code == 0 and "STOPPED" in out, (out, err)
    # Stopped, not killed: no run is left RUNNING, and the cut-short trial says so.
    (parent,), trials = runs(client, "job-sweep")
    assert parent.data.tags[schema.JOB] == first
    tags = [(t.info.status, {k: v for k, v in t.data.tags.items() if "plexlab." in k}) for t in trials]
    assert {t.info.status for t in trials} <= {"FINISHED", "KILLED"} and parent.info.status == "KILLED", tags
    cut = [t for t in trials if t.info.status == "KILLED"]
    assert len(cut) == 1 and schema.INTERRUPTED in cut[0].data.tags

    code, out, err = plexlab(capsys, "submit", str(config), "--resume", "--follow", *cluster)
    assert code == 0, err
    second = re.search(r"submitted (\S+):", out).group(1)
    assert "2 trials; best val/acc" in out and out.rstrip().endswith(f"{second}: SUCCEEDED"), out[-3000:]
    (again,), trials = runs(client, "job-sweep")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags[schema.JOB] == second and schema.ERROR not in again.data.tags
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)  # one run per trial
    resumed = next(t for t in trials if t.info.run_id == cut[0].info.run_id)
    assert schema.RESUMED_FROM in resumed.data.tags  # from its checkpoint, in its own run
    assert max(m.step for m in client.get_metric_history(resumed.info.run_id, "val/acc")) >= 29

    code, out, err = plexlab(capsys, "logs", second, *cluster)
    assert code == 0 and "2 trials; best val/acc" in out
    code, out, err = plexlab(capsys, "jobs", *cluster)
    assert code == 0 and "STOPPED" in out and "SUCCEEDED" in out, err
    rows = {row["job"]: row for row in api.jobs(head.address, head.token_file.read_text())}
    assert rows[first]["status"] == "STOPPED" and rows[second]["status"] == "SUCCEEDED"
    assert rows[second]["experiment"] == "job-sweep" and rows[second]["command"] == "sweep"
    value = float(rows[second]["best so far"].removeprefix("val/acc "))
    assert value == pytest.approx(again.data.metrics["val/acc_best"], abs=1e-4)


def test_a_notebook_handle_on_a_cluster_job(workdir, head):
    handle = api.submit(
        write_sweep(workdir, "handle-sweep"), address=head.address, token=head.token_file.read_text()
    )
    assert handle.status() in ("PENDING", "RUNNING")
    assert handle.wait(timeout=300) == "SUCCEEDED", handle.logs()[-3000:]
    best = handle.best()
    client = MlflowClient(handle.tracking_uri)
    (parent,), trials = runs(client, "handle-sweep")
    assert best is not None and best.finished and best.parent_run_id == parent.info.run_id
    assert best.value == pytest.approx(parent.data.metrics["val/acc_best"])
    assert best.run_id in {t.info.run_id for t in trials} and Path(best.checkpoint).exists()
    assert best.config["model"]["lr"] == pytest.approx(
        float(client.get_run(best.run_id).data.params["model.lr"])
    )
    assert handle.stop() == "SUCCEEDED"  # a finished job stays as it ended


def test_a_local_sweep_handle_stops_and_resumes(workdir):
    config = write_sweep(workdir, "local-sweep", store=False, **MIDWAY)
    handle = api.sweep(config, wait=False)
    client = MlflowClient(handle.tracking_uri)
    try:
        wait_for(lambda: midway(client, "local-sweep") or handle.status() != "RUNNING", 240, "a trial midway")
        assert handle.status() == "RUNNING", handle.logs()[-3000:]
        so_far = handle.best()
        assert so_far is not None and not so_far.finished and so_far.value is not None
        assert handle.stop() == "STOPPED"
        assert "plexlab: interrupted: stopped (SIGTERM)" in handle.logs()  # and how to resume it
    finally:
        stop(handle.process)
    (parent,), trials = runs(client, "local-sweep")
    assert parent.info.status == "KILLED" and all(t.info.status != "RUNNING" for t in trials)

    resumed = api.sweep(config, resume=True, wait=False)
    try:
        assert resumed.wait(timeout=300) == "SUCCEEDED", resumed.logs()[-3000:]
    finally:
        stop(resumed.process)
    best = resumed.best()
    (parent,), trials = runs(client, "local-sweep")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    assert best is not None and best.finished and best.parent_run_id == parent.info.run_id
    assert best.value == pytest.approx(parent.data.metrics["val/acc_best"]) and Path(best.checkpoint).exists()


class _NotRay(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_a_job_server() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotRay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_wrong_address_foreign_server_and_bad_token_are_one_line(workdir, head, not_a_job_server, capsys):
    config = write_sweep(workdir, "bad-sweep")
    wrong = workdir / "wrong_token"
    wrong.write_text("not-the-token")
    cases = {
        "cannot be reached": ["--address", "http://127.0.0.1:9"],
        "not a Ray dashboard": ["--address", not_a_job_server],
        "refused the token": ["--address", head.address, "--token-file", str(wrong)],
    }
    for expected, where in cases.items():
        for argv in (["submit", str(config), *where], ["jobs", *where]):
            code, out, err = plexlab(capsys, *argv)
            assert code == 2, (argv, out, err)
            lines = err.strip().splitlines()
            assert expected in lines[-1] and "Traceback" not in err, (argv, err)
    # No store both sides reach: refused before anything is sent.
    local = write_sweep(workdir, "no-store", store=False)
    code, _, err = plexlab(capsys, "submit", str(local), "--address", head.address)
    assert code == 2 and "tracking.uri" in err.strip().splitlines()[-1]
    code, _, err = plexlab(
        capsys, "logs", "plexlab-no-such-job", "--address", head.address, "--token-file", str(head.token_file)
    )
    assert code == 2 and "no such job" in err.strip().splitlines()[-1]


def test_the_job_id_and_token_are_read_as_ray_hands_them(monkeypatch, tmp_path):
    import json

    from plexlab import job_env, jobs

    monkeypatch.delenv(job_env.JOB_ID_VARIABLE, raising=False)
    monkeypatch.delenv(job_env.RAY_JOB_CONFIG_VARIABLE, raising=False)
    assert job_env.tags() == {}
    # A job submitted with Ray's own `ray job submit`: the id in the job config Ray hands its driver.
    config = {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc"}}
    monkeypatch.setenv(job_env.RAY_JOB_CONFIG_VARIABLE, json.dumps(config))
    assert job_env.tags() == {schema.JOB: "raysubmit_abc"}
    monkeypatch.setenv(job_env.JOB_ID_VARIABLE, "plexlab-x-1")  # plexlab's own launchers name it
    assert job_env.job_id() == "plexlab-x-1"

    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(jobs, "DEFAULT_TOKEN_FILE", tmp_path / "home_token")
    assert jobs.token() is None
    (tmp_path / "home_token").write_text("from-home\n")
    assert jobs.token() == "from-home"
    (tmp_path / "path_token").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "path_token"))
    assert jobs.token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.token() == "from-env" and jobs.token("given") == "given"
