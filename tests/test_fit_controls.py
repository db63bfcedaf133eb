"""How a fit stops and what it keeps: early stopping and the checkpoint policy, through the real runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from _experiment import write_experiment
from plexlab import api, cli, schema, tracking

CORA_MLP = Path(__file__).resolve().parents[1] / "sweeps" / "node_mlp_cora.yaml"


def test_early_stopping_ends_a_300_epoch_mlp_fit_and_records_the_epoch(workdir, one_torch_thread) -> None:
    result = api.fit(CORA_MLP, {"trainer.max_epochs": 300, "early_stopping": {"patience": 10}})
    run = tracking.Run.attach(result.tracking_uri, result.run_id)
    stopped = run.record().metrics[schema.STOPPED_EPOCH]
    history = run.history("val/acc")
    assert 10 <= stopped < 299, stopped
    assert len(history) == stopped + 1, "one validation per epoch, up to the one it stopped at"
    best_epoch = max(range(len(history)), key=lambda e: history[e][1])
    assert stopped - best_epoch == 10, "it waited `patience` epochs after the last improvement"
    assert result.metrics["val/acc_best"] == pytest.approx(history[best_epoch][1])
    assert "early stopping" in run.record().tags[schema.STOPPED] and "test/acc" in result.metrics


def test_the_checkpoint_policy_comes_from_the_config(workdir) -> None:
    config = write_experiment(workdir, checkpoint={"save_top_k": 2, "save_last": True})
    result = api.fit(config, {"trainer.max_epochs": 4})
    folder = result.checkpoint.parent
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["best-v1.ckpt", "best.ckpt", "last.ckpt"]


def test_a_bad_early_stopping_setting_is_one_line(workdir, capsys) -> None:
    config = write_experiment(workdir, early_stopping={"patience": 0})
    assert cli.main(["fit", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "early_stopping.patience" in err and "\n" not in err
