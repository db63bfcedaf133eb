"""The training runner, MLflow run content and the CLI, on a tiny generated hypergraph."""

import numpy as np
import pytest
import yaml
from _hypergraph_files import write_graph
from mlflow.tracking import MlflowClient
from plexlab import api, cli, schema, tracking
from plexlab.datamodules.errors import DataError
from plexlab.errors import ConfigError, TrackingError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def experiment(workdir):
    """A tiny hypergcl experiment file in the working directory."""
    folder = write_graph(workdir / "graph")
    config = {
        "name": "tiny",
        "seed": 0,
        "model": {"name": "hypergcl", "hidden": 16, "dropout": 0.0, "lr": 0.01},
        "data": {"name": "hypergraph", "path": str(folder)},
        "trainer": {"max_epochs": 8},
        "tracking": {"tags": {"purpose": "test"}},
    }
    path = workdir / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_records_one_complete_mlflow_run(experiment, workdir):
    result = api.fit(experiment)
    client = MlflowClient(result.tracking_uri)
    assert result.tracking_uri == f"sqlite:///{workdir / 'mlflow.db'}"
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    # Params: the resolved config plus defaults and data-derived sizes.
    params = run.data.params
    assert (
        params["model.hidden"] == "16"
        and params["model.in_dim"] == "3"
        and params["model.num_classes"] == "3"
    )
    assert params["model.temperature"] == "0.3" and params["trainer.max_epochs"] == "8"
    tags = run.data.tags
    assert tags[schema.MODEL] == "hypergcl" and tags[schema.DATA] == "hypergraph"
    assert tags["purpose"] == "test" and len(tags[schema.CONFIG_HASH]) == 12
    assert len(tags.get(schema.GIT_COMMIT, "")) in (0, 40)
    # Per-step metrics: one train/loss and one val/acc per epoch (full batch: one step an epoch).
    history = client.get_metric_history(result.run_id, "val/acc")
    assert len(history) == 8 and len(client.get_metric_history(result.run_id, "train/loss")) == 8
    # The checkpoint is the best epoch by val/acc, and the test ran on it.
    best = max(m.value for m in history)
    assert result.metrics["val/acc_best"] == pytest.approx(best)
    assert run.data.metrics["val/acc_best"] == pytest.approx(best)
    assert run.data.metrics["test/acc"] == pytest.approx(result.metrics["test/acc"])
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "checkpoints", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(result.run_id, "checkpoints")] == ["checkpoints/best.ckpt"]
    assert [a.path for a in client.list_artifacts(result.run_id, "plots")] == ["plots/learning_curves.png"]
    logged = yaml.safe_load(open(client.download_artifacts(result.run_id, "config.yaml")))
    assert logged["model"]["hidden"] == 16 and logged["data"]["path"] == str(workdir / "graph")
    assert result.checkpoint.exists()


def test_runs_of_the_same_seed_get_distinct_names(experiment):
    """The seeded global RNG must not pick the run name: two fits of one file get two names."""
    first, second = api.fit(experiment), api.fit(experiment)
    client = MlflowClient(first.tracking_uri)
    names = {client.get_run(r.run_id).info.run_name for r in (first, second)}
    assert len(names) == 2


def test_test_command_reproduces_the_fit_test_metrics(experiment):
    fitted = api.fit(experiment)
    tested = api.test(experiment, fitted.checkpoint)
    assert tested.metrics["test/acc"] == pytest.approx(fitted.metrics["test/acc"])
    run = MlflowClient(tested.tracking_uri).get_run(tested.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[schema.KIND] == "test"


def test_embed_writes_one_row_per_node_in_id_order(experiment, workdir):
    fitted = api.fit(experiment, trainer__max_epochs=2)
    out = api.embed(experiment, fitted.checkpoint, workdir / "emb.npz")
    saved = np.load(out)
    assert saved["embedding"].shape == (60, 16)
    assert list(saved["ids"]) == [str(i) for i in range(60)]


def test_failing_run_ends_failed_with_the_reason(experiment, monkeypatch):
    from plexlab.modules.hypergraph.hypergcl import HyperGCL

    def explode(self, batch, batch_idx):
        if self.current_epoch == 2:
            raise RuntimeError("loss went NaN at epoch 2")
        return original(self, batch, batch_idx)

    original = HyperGCL.training_step
    monkeypatch.setattr(HyperGCL, "training_step", explode)
    with pytest.raises(RuntimeError, match="NaN"):
        api.fit(experiment)
    client = MlflowClient(tracking.resolve_uri(None))
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FAILED"
    assert "loss went NaN at epoch 2" in run.data.tags[schema.ERROR]
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2  # what it did before is kept


def test_unreachable_tracking_server_fails_before_training(experiment, workdir):
    with pytest.raises(TrackingError, match=r"127\.0\.0\.1:9"):
        api.fit(experiment, tracking__uri="http://127.0.0.1:9")
    assert not (workdir / "plexlab_runs").exists()


def test_bad_data_file_creates_no_run(experiment, workdir):
    (workdir / "graph" / "labels.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"labels\.npy"):
        api.fit(experiment)
    client = MlflowClient(tracking.resolve_uri(None))
    assert client.get_experiment_by_name("tiny") is None


@pytest.mark.parametrize(
    "ckpt, problem", [("missing.ckpt", "no such checkpoint"), ("tiny.yaml", "not a loadable checkpoint")]
)
def test_bad_checkpoint_is_one_line(experiment, workdir, ckpt, problem):
    with pytest.raises(ConfigError, match=problem) as err:
        api.test(experiment, workdir / ckpt)
    assert "\n" not in str(err.value)


def test_checkpoint_of_another_model_is_refused(experiment, workdir):
    fitted = api.fit(experiment, trainer__max_epochs=1)
    with pytest.raises(ConfigError, match="does not fit this model config"):
        api.test(experiment, fitted.checkpoint, model__hidden=32)


def test_cli_exit_codes_and_one_line_errors(experiment, capsys):
    assert cli.main(["fit", str(experiment), "--set", "model.hiden=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.hiden" in err and "tiny.yaml" in err
    assert cli.main(["fit", str(experiment), "--set", "trainer.max_epochs=2"]) == 0
    assert "test/acc" in capsys.readouterr().out
    assert cli.main(["runs", "tiny"]) == 0
    assert "FINISHED" in capsys.readouterr().out
    assert cli.main(["runs", "nope"]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        cli.main(["--debug", "fit", str(experiment), "--set", "model.hiden=8"])


def test_cli_list_shows_every_registered_name(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*api.models(), *api.datamodules()]:
        assert name in out


def test_runs_are_sorted_best_first(experiment):
    for lr in (0.0001, 0.05):
        api.fit(experiment, model__lr=lr, trainer__max_epochs=4)
    rows = api.runs("tiny")
    scores = [r["val/acc_best"] for r in rows]
    assert scores == sorted(scores, reverse=True) and {r["model.lr"] for r in rows} == {"0.0001", "0.05"}
