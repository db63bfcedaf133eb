"""Sweeps that build on earlier trials, on the real co-citation Cora: `--extend N` under the same parent run
(Optuna told the finished trials), `sweep.start_from` (an old sweep's best configs first) and
`sweep.time_budget_s`."""

import pickle
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from plexlab import api, cli, schema, tracking
from plexlab.errors import ConfigError


def cora_sweep(workdir: Path, file: str = "cora.yaml", epochs: int = 3, **sweep) -> Path:
    """A tiny hypergcl sweep on the bundled Cora: hidden 8, a few epochs, 2 trials at a time."""
    config = {
        "name": "cora-extend",
        "seed": 0,
        "model": {"name": "hypergcl", "hidden": 8, "dropout": 0.0},
        "data": {"name": "hypergraph", "path": "bundled:cocitation_cora"},
        "trainer": {"max_epochs": epochs, "accelerator": "cpu"},
        "sweep": {
            "num_samples": 8,
            "space": {
                "model.lr": {"loguniform": [1.0e-3, 3.0e-2]},
                "model.aug": {"choice": ["edge", "feature"]},
            },
            "scheduler": {"name": "fifo"},
            "resources": {"cpu": 1},
            "max_concurrent": 2,
            "storage": str(workdir / "sweeps"),
            **sweep,
        },
    }
    path = workdir / file
    path.write_text(yaml.safe_dump(config))
    return path


def runs_of(experiment: str) -> tuple[list, dict[str, list]]:
    """(sweep parent runs, their child runs by parent id)."""
    client = MlflowClient(tracking.resolve_uri(None))
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(schema.KIND) == schema.SWEEP_KIND]
    kids = {
        p.info.run_id: [r for r in runs if r.data.tags.get(schema.PARENT_RUN_ID) == p.info.run_id]
        for p in parents
    }
    return parents, kids


@pytest.mark.ray
def test_extend_adds_trials_under_the_same_parent_and_optuna_learns_from_the_finished_ones(workdir):
    config = cora_sweep(workdir, epochs=2, search={"name": "optuna"})
    first = api.sweep(config)
    assert cli.main(["sweep", str(config), "--extend", "4"]) == 0
    (parent,), kids = runs_of("cora-extend")
    children = kids[parent.info.run_id]
    assert parent.info.run_id == first.parent_run_id and parent.info.status == "FINISHED"
    assert len(children) == 12 and len({c.data.tags[schema.TRIAL_ID] for c in children}) == 12
    assert all(c.info.status == "FINISHED" and "val/acc_best" in c.data.metrics for c in children)
    assert parent.data.metrics[schema.TRIALS] == 12
    best = max(c.data.metrics["val/acc_best"] for c in children)
    assert parent.data.metrics["val/acc_best"] == pytest.approx(best)
    assert parent.data.tags[schema.BEST_TRIAL] in {
        c.data.tags[schema.TRIAL_ID]
        for c in children
        if c.data.metrics["val/acc_best"] == pytest.approx(best)
    }
    # The extension's Optuna study holds the 8 finished trials, told with their scores (best first) before
    # it suggested anything, then its own 4.
    (extension,) = parent.data.tags[schema.EXTENDED].split(",")
    (state,) = Path(extension).glob("searcher-state-*.pkl")
    study = pickle.loads(state.read_bytes())["_ot_study"]
    assert len(study.trials) == 12 and all(t.state.name == "COMPLETE" for t in study.trials)
    told = sorted((row["val/acc"] for row in first.trials), reverse=True)
    assert [t.value for t in study.trials[:8]] == pytest.approx(told)


def test_extend_needs_a_finished_sweep(workdir):
    with pytest.raises(ConfigError, match="--extend: needs a finished sweep"):
        api.sweep(cora_sweep(workdir), extend=2)


@pytest.mark.ray
def test_start_from_tries_the_old_sweeps_best_config_first(workdir):
    old = api.sweep(cora_sweep(workdir, epochs=2, num_samples=4))
    new = cora_sweep(workdir, "new.yaml", epochs=2, num_samples=2, start_from=old.parent_run_id)
    result = api.sweep(new)
    parents, kids = runs_of("cora-extend")
    (parent,) = [p for p in parents if p.info.run_id == result.parent_run_id]
    assert parent.data.tags[schema.START_FROM].startswith(f"{old.parent_run_id}: 1 configs")
    tried = {(c.data.params["model.lr"], c.data.params["model.aug"]) for c in kids[parent.info.run_id]}
    assert len(tried) == 2
    best = old.best_config["model"]
    assert (str(best["lr"]), best["aug"]) in tried


def test_start_from_an_unknown_run_is_a_config_error(workdir):
    with pytest.raises(ConfigError, match=r"sweep\.start_from: no sweep run 0123 in experiment cora-extend"):
        api.sweep(cora_sweep(workdir, start_from="0123"))


@pytest.mark.ray
def test_a_time_budget_stops_the_sweep_and_the_parent_says_so(workdir):
    config = cora_sweep(workdir, epochs=200, num_samples=20, time_budget_s=25)
    result = api.sweep(config)
    (parent,), kids = runs_of("cora-extend")
    children = kids[parent.info.run_id]
    assert len(children) < 20
    assert parent.data.tags[schema.TIME_BUDGET].startswith("25 s, ran out")
    assert all(c.info.status != "RUNNING" for c in children) and parent.info.status == "FINISHED"
    assert result.best_metric is not None


def test_finished_trials_params_come_back_from_mlflow_as_their_distributions_draw_them():
    from plexlab.sweep_extend import _parse, nested

    assert _parse({"choice": [64, 128]}, "128") == 128
    assert _parse({"choice": ["edge", "feature"]}, "feature") == "feature"
    assert _parse({"choice": [0.0, 0.1]}, "0.1") == 0.1
    assert _parse({"loguniform": [1e-4, 1e-2]}, "0.0031") == pytest.approx(0.0031)
    assert _parse({"randint": [1, 4]}, "3") == 3 and isinstance(_parse({"randint": [1, 4]}, "3"), int)
    assert nested({"model.lr": 0.1, "seed": 2}) == {"model": {"lr": 0.1}, "seed": 2}
