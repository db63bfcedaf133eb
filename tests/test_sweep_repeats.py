"""sweep.repeat: every trial trained on several splits (nested runs), reported to Tune as the per-epoch mean
over its repeats and ranked by the mean of its repeats' best epochs, on the real co-citation Cora."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from plexlab import api, schema
from plexlab.config import load
from plexlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def cora_sweep(workdir: Path, **sweep) -> Path:
    """A tiny hypergcl sweep on the bundled Cora: hidden 8, 3 epochs, 2 trials at a time (rates high enough
    that three epochs separate the trials)."""
    config = {
        "name": "cora-repeats",
        "seed": 0,
        "model": {"name": "hypergcl", "hidden": 8, "dropout": 0.0},
        "data": {"name": "hypergraph", "path": "bundled:cocitation_cora"},
        "trainer": {"max_epochs": 3, "accelerator": "cpu"},
        "sweep": {
            "num_samples": 4,
            "space": {"model.lr": {"loguniform": [3.0e-3, 1.0e-1]}},
            "scheduler": {"name": "fifo"},
            "resources": {"cpu": 1},
            "max_concurrent": 2,
            "storage": str(workdir / "sweeps"),
            **sweep,
        },
    }
    path = workdir / "cora-repeats.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ---- without Ray ------------------------------------------------------------------------------------------


def test_the_last_repeat_reports_the_mean_over_all_repeats_at_each_epoch():
    from plexlab.sweep_repeats import _ReportMeanToTune

    earlier = [[0.2, 0.4, 0.6], [0.3, 0.5]]  # the second repeat stopped early: its last value counts
    report = _ReportMeanToTune(every=1, metric="val/acc", earlier=earlier)

    def at(epoch: int, value: float) -> dict[str, float]:
        trainer = SimpleNamespace(
            callback_metrics={"val/acc": torch.tensor(value), "train/loss": torch.tensor(1.5)},
            current_epoch=epoch,
            check_val_every_n_epoch=1,
        )
        return report.epoch_metrics(trainer)

    assert at(0, 0.4)["val/acc"] == pytest.approx((0.2 + 0.3 + 0.4) / 3)
    assert at(2, 0.9)["val/acc"] == pytest.approx((0.6 + 0.5 + 0.9) / 3)
    assert at(2, 0.9)["train/loss"] == 1.5 and at(2, 0.9)[schema.REPEATS] == 3


@pytest.mark.parametrize(
    ("repeat", "problem"),
    [
        ({"data.split": [0]}, "at least two distinct values"),
        ({"data.split": [1, 1]}, "at least two distinct values"),
        ({"split": [0, 1]}, "must name model.<arg>"),
    ],
)
def test_a_repeat_that_cannot_work_is_a_config_error_naming_the_key(workdir, repeat, problem):
    with pytest.raises(ConfigError, match=rf"sweep\.repeat: .*{problem}"):
        load(cora_sweep(workdir, repeat=repeat))


def test_a_repeated_key_that_is_also_searched_is_refused(workdir):
    space = {"data.split": {"choice": [0, 1]}}
    with pytest.raises(ConfigError, match="both searched"):
        load(cora_sweep(workdir, repeat={"data.split": [0, 1]}, space=space))


def test_repeats_with_pbt_are_refused_before_ray_starts(workdir):
    sweep = {"repeat": {"seed": [0, 1]}, "scheduler": {"name": "pbt", "perturbation_interval": 1}}
    with pytest.raises(ConfigError, match=r"sweep\.repeat: PBT cannot exploit repeats"):
        api.sweep(cora_sweep(workdir, **sweep))


def test_the_repeat_sweep_file_validates():
    cfg = load(ROOT / "sweeps" / "hypergcl_cora_repeat_sweep.yaml")
    assert cfg.sweep is not None and cfg.sweep.repeat == {"data.split": [0, 1, 2]}


# ---- through Ray Tune ---------------------------------------------------------------------------------


def _history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.ray
def test_a_repeated_sweep_has_nested_runs_per_split_and_ranks_trials_by_the_mean(workdir):
    from ray.tune import ExperimentAnalysis

    result = api.sweep(cora_sweep(workdir, repeat={"data.split": [0, 1, 2]}))
    client = MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name("cora-repeats").experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get(schema.KIND) == schema.SWEEP_KIND]
    trials = [r for r in runs if r.data.tags.get(schema.PARENT_RUN_ID) == parent.info.run_id]
    assert len(trials) == 4 and all(t.info.status == "FINISHED" for t in trials)
    reported = {  # what Tune saw of each trial, epoch by epoch
        df["trial_id"].iloc[0]: list(df["val/acc"])
        for df in ExperimentAnalysis(result.path).trial_dataframes.values()
    }
    means = {}
    for trial in trials:
        nested = [r for r in runs if r.data.tags.get(schema.PARENT_RUN_ID) == trial.info.run_id]
        assert sorted(r.data.tags[schema.REPEAT] for r in nested) == [f"data.split={i}" for i in range(3)]
        assert all(r.info.status == "FINISHED" and r.data.params["data.split"] in "012" for r in nested)
        bests = [r.data.metrics["val/acc_best"] for r in nested]
        for r in nested:  # each repeat's best is its own best epoch
            assert r.data.metrics["val/acc_best"] == pytest.approx(
                max(_history(client, r.info.run_id, "val/acc"))
            )
        mean = sum(bests) / 3
        std = (sum((b - mean) ** 2 for b in bests) / 2) ** 0.5
        assert trial.data.metrics["val/acc_mean"] == pytest.approx(mean)
        assert trial.data.metrics["val/acc_std"] == pytest.approx(std)
        assert trial.data.metrics[schema.REPEATS] == 3 and "test/acc_mean" in trial.data.metrics
        # Tune saw the per-epoch mean over the three splits.
        curves = [_history(client, r.info.run_id, "val/acc") for r in nested]
        per_epoch = [sum(values) / 3 for values in zip(*curves, strict=True)]
        assert reported[trial.data.tags[schema.TRIAL_ID]] == pytest.approx(per_epoch)
        means[trial.data.tags[schema.TRIAL_ID]] = mean
    # The best trial is the one with the best mean: in the result, the summary table, the parent run and
    # `plexlab runs`.
    # Trials that tie on the mean may be named in any order: compare the means they stand for.
    best = max(means.values())
    assert result.best_metric == pytest.approx(best)
    assert {row["trial"]: row["val/acc"] for row in result.trials} == pytest.approx(means)
    assert means[parent.data.tags[schema.BEST_TRIAL]] == pytest.approx(best)
    assert parent.data.metrics["val/acc_mean"] == pytest.approx(best)
    ranked = [row for row in api.runs("cora-repeats") if row["parent"] == parent.info.run_id[:8]]
    assert means[ranked[0]["run"]] == pytest.approx(best)
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    assert "/repeat-" in str(result.best_checkpoint)
