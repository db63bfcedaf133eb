"""A sweep's pictures on its parent run (parallel coordinates, hyperparameter importance, every trial's
learning curve), built from MLflow: on synthetic trial runs, degenerate sweeps included, and after a real
small sweep. Also the experiment tag that opens the dashboard in its model-training view, and the URL that
`plexlab ui` prints."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _experiment import tiny_config
from _processes import free_port, stop
from mlflow.tracking import MlflowClient
from plexlab import api, cli, schema, sweep_plots, tracking

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = {"plots/parallel_coordinates.png", "plots/param_importance.png", "plots/val_acc_per_epoch.png"}


def fake_sweep(workdir: Path, trials: list[dict], curves: list[list[float]]) -> tracking.Run:
    """A parent run with one child run per trial: its params and a val/acc per epoch (with Lightning's
    `epoch` metric beside it, at a step that is not the epoch)."""
    uri = tracking.resolve_uri(None)
    parent = tracking.create_run(uri, "fake", tags={schema.KIND: schema.SWEEP_KIND})
    for i, (params, curve) in enumerate(zip(trials, curves, strict=True)):
        child = tracking.create_run(
            uri, "fake", run_name=f"t{i}", tags={schema.TRIAL_ID: f"t{i}"}, parent_run_id=parent.run_id
        )
        child.log_params(params)
        for epoch, value in enumerate(curve):
            child.log_metrics({"val/acc": value, schema.EPOCH: epoch}, step=10 * epoch + 9)
        child.end("FINISHED")
    return parent


def pngs(client: MlflowClient, run_id: str, where: Path) -> dict[str, bytes]:
    """The run's plots/ artifacts, downloaded."""
    found = {}
    for artifact in client.list_artifacts(run_id, "plots"):
        local = client.download_artifacts(run_id, artifact.path, str(where))
        found[artifact.path] = Path(local).read_bytes()
    return found


def test_plots_of_synthetic_trials_are_valid_pngs_and_importance_finds_the_parameter_that_matters(workdir):
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    trials = [{"model.lr": lr, "model.aug": ["edge", "feature"][i % 2]} for i, lr in enumerate(lrs)]
    curves = [[0.2, 0.3 + i / 20, 0.4 + i / 10] for i in range(len(lrs))]  # better with a higher lr
    parent = fake_sweep(workdir, trials, curves)

    found = sweep_plots.trials(parent, "fake", "val/acc", "max", ["model.lr", "model.aug"])
    assert [t.name for t in found] == [f"t{i}" for i in range(6)]
    assert [t.curve for t in found] == [list(enumerate(c)) for c in curves]  # epochs, not steps
    assert [t.score for t in found] == pytest.approx([c[-1] for c in curves])
    assert found[0].params == {"model.lr": 1e-4, "model.aug": "edge"}
    shares = sweep_plots.importances(found, ["model.lr", "model.aug"], "max")
    assert shares["model.lr"] > 0.8 > shares["model.aug"], shares

    paths = sweep_plots.log_plots(parent, "fake", "val/acc", "max", ["model.lr", "model.aug"])
    assert set(paths) == PLOTS
    files = pngs(parent.client, parent.run_id, workdir / "down")
    assert set(files) == PLOTS
    assert all(data.startswith(PNG) and len(data) > 2000 for data in files.values())


@pytest.mark.parametrize(
    ("trials", "curves", "why"),
    [
        ([{"model.lr": 0.1}, {"model.lr": 0.2}], [[0.5], [0.6]], "two trials"),
        (
            [{"model.lr": v, "model.aug": "edge"} for v in (0.1, 0.2, 0.3)],
            [[0.5], [0.6], [0.7]],
            "one varied",
        ),
        (
            [{"model.lr": v, "model.aug": a} for v, a in ((0.1, "a"), (0.2, "b"), (0.3, "a"))],
            [[0.5]] * 3,
            "ties",
        ),
        ([{"model.lr": 0.1}, {"model.lr": 0.2}, {"model.lr": 0.3}], [[], [], []], "no metric"),
    ],
)
def test_a_degenerate_sweep_gets_every_plot_saying_why_without_computing_importance(
    workdir, monkeypatch, trials, curves, why
):
    def refuse(*args, **kwargs):
        raise AssertionError(f"importance computed for a degenerate sweep ({why})")

    monkeypatch.setattr(sweep_plots, "importances", refuse)
    parent = fake_sweep(workdir, trials, curves)
    assert set(sweep_plots.log_plots(parent, "fake", "val/acc", "max", ["model.lr", "model.aug"])) == PLOTS
    files = pngs(parent.client, parent.run_id, workdir / "down")
    assert set(files) == PLOTS and all(data.startswith(PNG) for data in files.values())


def test_a_plot_that_fails_at_the_end_of_a_sweep_is_a_warning(workdir, monkeypatch, caplog):
    parent = fake_sweep(workdir, [{"model.lr": 0.1}], [[0.5]])
    monkeypatch.setattr(sweep_plots, "learning_curves", lambda *a: 1 / 0)
    sweep_plots.after_sweep(parent, "fake", "val/acc", "max", ["model.lr"])
    assert "could not plot the sweep: division by zero" in caplog.text


def test_experiments_open_in_the_dashboards_model_training_view(workdir):
    uri = tracking.resolve_uri(None)
    client = MlflowClient(uri)
    api.fit(tiny_config(workdir))
    assert client.get_experiment_by_name("tiny").tags[schema.EXPERIMENT_KIND] == "custom_model_development"
    # An experiment made before plexlab tagged it gets the tag with its next run.
    client.create_experiment("older")
    tracking.create_run(uri, "older").end("FINISHED")
    assert client.get_experiment_by_name("older").tags[schema.EXPERIMENT_KIND] == schema.MODEL_TRAINING


def _ui_first_line(workdir: Path, *args: str) -> str:
    port = free_port()
    command = [sys.executable, "-m", "plexlab.cli", "ui", "--port", str(port), *args]
    ui = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        return ui.stdout.readline().strip().replace(str(port), "PORT")
    finally:
        stop(ui)


def test_plexlab_ui_prints_the_experiments_url_before_it_starts_the_dashboard(workdir):
    uri = tracking.resolve_uri(None)
    tracking.create_run(uri, "tiny").end("FINISHED")
    number = tracking.find_experiment_id(uri, "tiny")
    line = _ui_first_line(workdir, "--experiment", "tiny")
    assert line.startswith(f"MLflow dashboard on http://127.0.0.1:PORT/#/experiments/{number} "), line


def test_plexlab_ui_finds_the_experiment_of_a_file_or_prints_the_servers_url(workdir, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(cli.os, "execv", lambda program, command: started.append(command))
    uri = tracking.resolve_uri(None)
    tracking.create_run(uri, "other").end("FINISHED")
    tracking.create_run(uri, "tiny").end("FINISHED")
    (workdir / "exp.yaml").write_text(yaml.safe_dump(tiny_config(workdir)))
    assert cli.main(["ui", "exp.yaml", "--port", "5123"]) == 0
    assert cli.main(["ui", "--port", "5123"]) == 0
    lines = capsys.readouterr().out.splitlines()
    number = tracking.find_experiment_id(uri, "tiny")
    assert lines[0].startswith(
        f"MLflow dashboard on http://127.0.0.1:5123/#/experiments/{number} (store {uri})"
    )
    assert lines[1].startswith(f"MLflow dashboard on http://127.0.0.1:5123 (store {uri})")
    assert started[0][-6:] == ["--backend-store-uri", uri, "--host", "127.0.0.1", "--port", "5123"]


def test_plexlab_ui_names_an_unknown_experiment_in_one_line(workdir, capsys):
    assert cli.main(["ui", "--experiment", "nowhere"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (MLflow's INFO lines on a new store come first)
    assert last.startswith("plexlab: error: no experiment 'nowhere' in sqlite:"), last


@pytest.mark.ray
def test_a_small_sweep_logs_its_plots_on_the_parent_run_and_the_cli_builds_them_again(workdir, capsys):
    config = tiny_config(workdir, trainer={"max_epochs": 2, "accelerator": "cpu"})
    config["sweep"] = {
        "metric": "val/acc",
        "mode": "max",
        "num_samples": 3,
        "space": {"model.lr": {"loguniform": [1.0e-3, 1.0e-1]}, "model.hidden": {"choice": [4, 8]}},
        "resources": {"cpu": 1},
        "storage": str(workdir / "sweeps"),
    }
    path = workdir / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    result = api.sweep(path)
    client = MlflowClient(result.tracking_uri)
    files = pngs(client, result.parent_run_id, workdir / "down")
    assert set(files) == PLOTS
    assert all(data.startswith(PNG) and len(data) > 2000 for data in files.values())
    curves = sweep_plots.trials(
        tracking.Run.attach(result.tracking_uri, result.parent_run_id), "tiny", "val/acc", "max", ["model.lr"]
    )
    assert len(curves) == 3 and all([e for e, _ in t.curve] == [0, 1] for t in curves), curves

    assert cli.main(["sweep", str(path), "--plots"]) == 0
    assert f"parent run {result.parent_run_id}: plots/parallel_coordinates.png" in capsys.readouterr().out
