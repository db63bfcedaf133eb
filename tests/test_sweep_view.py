"""The sweep's concise view: one table of trials on a terminal, one line per trial event elsewhere, and
Tune's own output back with `--verbose`.

The unit tests feed the view the events Tune sends (fake trials: the view reads only their id, config,
status and error); the Ray test runs a small sweep through the CLI as a user would, with output to a pipe.
"""

import io
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from _experiment import tiny_config
from plexlab import sweep_view
from plexlab.sweep_view import SweepView
from rich.console import Console

PLEXLAB = [sys.executable, "-m", "plexlab.cli"]
TRACEBACK = 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: out of memory\n'


def fake_trial(trial_id: str, config: dict[str, Any] | None = None, error: str | None = None) -> Any:
    return SimpleNamespace(
        trial_id=trial_id,
        config=config or {},
        status="PENDING",
        error_file=f"/sweeps/{trial_id}/error.txt" if error else None,
        num_failures=1 if error else 0,
        get_error=lambda: error,
    )


def piped_view(**kwargs: Any) -> tuple[SweepView, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=60)  # a pipe: narrow, which must not wrap lines
    view = SweepView("demo", "val/acc", kwargs.pop("mode", "max"), console=console, **kwargs)
    return view, out


def play(view: SweepView, trials: list[Any], curves: dict[str, list[float]]) -> None:
    """Tune's events for trials that report `curves` (one value per epoch), in order."""
    for trial in trials:
        view.on_trial_start(0, trials, trial)
        trial.status = "RUNNING"
        for epoch, value in enumerate(curves.get(trial.trial_id, [])):
            view.on_trial_result(
                0, trials, trial, {"epoch": epoch, "val/acc": value, "training_iteration": 1}
            )


def rendered(view: SweepView) -> str:
    out = io.StringIO()
    Console(file=out, force_terminal=False, width=200).print(view.render())
    return out.getvalue()


def test_off_a_terminal_each_trial_event_is_one_line_and_epochs_are_not():
    view, out = piped_view(num_trials=3, max_epochs=4)
    a, b, c = (fake_trial(f"t_0000{i}", {"model": {"lr": 0.001 * (i + 1), "aug": "edge"}}) for i in range(3))
    c.get_error = lambda: TRACEBACK
    c.error_file = "/sweeps/t_00002/error.txt"
    view.setup(total_num_samples=3)
    play(view, [a, b, c], {"t_00000": [0.5, 0.7, 0.6, 0.65], "t_00001": [0.4, 0.45], "t_00002": [0.3]})
    view.on_trial_complete(0, [a, b, c], a)
    view.on_trial_complete(0, [a, b, c], b)
    view.on_trial_error(0, [a, b, c], c)
    view.on_experiment_end([a, b, c])
    lines = out.getvalue().splitlines()
    assert len(lines) == 6, lines  # started x3, finished, stopped early, errored: no line per epoch
    assert "trial t_00000 started: model.lr=0.001 model.aug=edge" in lines[0]
    assert any("trial t_00000 finished: epoch 4/4, val/acc 0.65 (best 0.7)" in line for line in lines)
    assert any("trial t_00001 stopped early: epoch 2/4, val/acc 0.45 (best 0.45)" in line for line in lines)
    (errored,) = [line for line in lines if "t_00002" in line and "errored" in line]
    assert "RuntimeError: out of memory" in errored and "/sweeps/t_00002/error.txt" in errored
    assert "Traceback" not in out.getvalue()


def test_the_table_shows_status_epoch_metric_best_so_far_and_the_error():
    view, _ = piped_view(num_trials=4, max_epochs=4)
    trials = [fake_trial(f"t_0000{i}", {"model": {"hidden": 8 * (i + 1)}}) for i in range(4)]
    trials[2].get_error = lambda: TRACEBACK
    play(view, trials[:3], {"t_00000": [0.5, 0.9, 0.6, 0.65], "t_00001": [0.4, 0.45], "t_00002": [0.3]})
    view._sync(trials)  # the fourth: known to Tune, not started
    view.on_trial_complete(0, trials, trials[0])
    view.on_trial_error(0, trials, trials[2])
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in rendered(view).splitlines()
        if line.startswith("│")
    }
    assert rows["t_00000"][:5] == ["finished", "4/4", "0.65", "0.9", ""]
    assert rows["t_00001"][:5] == ["running", "2/4", "0.45", "0.45", ""]
    assert rows["t_00002"][:5] == ["error", "1/4", "0.3", "0.3", "RuntimeError: out of memory"]
    assert rows["t_00003"][:5] == ["pending", "", "", "", ""]
    assert rows["t_00001"][5] == "model.hidden=16"
    header = rendered(view).splitlines()[0]
    assert "2/4 trials done, 1 running, 1 errored; best val/acc 0.9 (trial t_00000)" in header


def test_best_so_far_follows_the_mode():
    view, _ = piped_view(mode="min")
    trials = [fake_trial("t_00000"), fake_trial("t_00001")]
    play(view, trials, {"t_00000": [0.5, 0.2, 0.4], "t_00001": [0.3, 0.25]})
    assert view.rows["t_00000"].best == 0.2 and view.rows["t_00001"].best == 0.25
    assert view.best().trial == "t_00000"


def test_the_error_is_read_from_the_local_error_file_tune_just_wrote(tmp_path):
    view, out = piped_view(max_epochs=3)
    trial = fake_trial("t_00000", error=None)  # the storage copy is not synced yet
    trial.error_file = str(tmp_path / "error.txt")
    Path(trial.error_file).write_text(TRACEBACK.replace("out of memory", "negative dimension -2"))
    view.on_trial_start(0, [trial], trial)
    view.on_trial_error(0, [trial], trial)
    line = out.getvalue().splitlines()[-1]
    assert "errored before its first epoch: RuntimeError: negative dimension -2 (traceback: " in line
    assert view.rows["t_00000"].error == "RuntimeError: negative dimension -2"


def test_a_retried_trial_says_so_and_its_restart_clears_the_error():
    view, out = piped_view(max_epochs=3)
    trial = fake_trial("t_00000", error=TRACEBACK)
    play(view, [trial], {"t_00000": [0.5]})
    view.on_trial_recover(0, [trial], trial)
    assert view.rows["t_00000"].status == "retrying"
    view.on_trial_start(0, [trial], trial)
    lines = out.getvalue().splitlines()
    assert "failed, retrying (1 failures so far): RuntimeError: out of memory" in lines[1]
    assert "trial t_00000 restarted" in lines[2] and view.rows["t_00000"].error == ""


def test_on_a_terminal_the_table_is_redrawn_in_place_not_printed_per_event():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    view = SweepView("demo", "val/acc", "max", max_epochs=2, console=console)
    trials = [fake_trial("t_00000"), fake_trial("t_00001")]
    play(view, trials, {"t_00000": [0.5, 0.6], "t_00001": [0.4]})
    view.on_trial_complete(0, trials, trials[0])
    view.on_experiment_end(trials)
    text = out.getvalue()
    assert "\x1b[1A" in text and "started" not in text  # the cursor goes up to redraw; no event lines
    assert text.count("t_00000") > 1 and "finished" in text


def test_the_view_survives_tunes_pickle_of_the_run_config():
    view, _ = piped_view(num_trials=2, max_epochs=5)
    play(view, [fake_trial("t_00000")], {"t_00000": [0.5]})
    back = pickle.loads(pickle.dumps(view))
    assert (back.name, back.metric, back.num_trials, back.max_epochs) == ("demo", "val/acc", 2, 5)
    assert back.rows == {}  # a resumed sweep starts its view afresh


def test_the_tuner_gets_the_view_and_a_silent_tune_and_a_restored_one_takes_this_runs(tmp_path):
    from plexlab import config, sweep
    from plexlab.sweep_trial import TrialSpec

    cfg = config.load(tiny_config(tmp_path, sweep={"space": {"model.lr": {"loguniform": [1.0e-3, 1.0e-2]}}}))
    spec = TrialSpec({}, "parent", 1, 0, 1, 1, False, str(tmp_path), str(tmp_path / "s"), 0)
    view = sweep_view.view_for("s", "val/acc", "max", 8, cfg.trainer)
    args = (cfg, spec, "s", str(tmp_path), str(tmp_path / "s"), "val/acc", "max", False)
    run_config = sweep._tuner(*args, view=view)._local_tuner.get_run_config()
    assert run_config.verbose == 0 and run_config.callbacks == [view] and view.max_epochs == 1
    loud = sweep._tuner(*args)  # no view: Tune's own tables, as --verbose asks
    assert loud._local_tuner.get_run_config().verbose == sweep_view.TUNE_VERBOSE
    # A sweep begun with the view, resumed with --verbose (and the other way round):
    tuner = sweep._tuner(*args, view=pickle.loads(pickle.dumps(view)))
    sweep_view.replace_on_restore(tuner, None)
    run_config = tuner._local_tuner.get_run_config()
    assert run_config.verbose == sweep_view.TUNE_VERBOSE and not run_config.callbacks
    sweep_view.replace_on_restore(tuner, view)
    assert tuner._local_tuner.get_run_config().callbacks == [view]


def test_quiet_tune_sets_and_restores_tunes_output_settings(monkeypatch):
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    monkeypatch.setenv("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "7")
    monkeypatch.delenv("TUNE_PRINT_ALL_TRIAL_ERRORS", raising=False)
    with sweep_view.quiet_tune():
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0" and os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "0"
        assert os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] == "7"  # the user's
        assert logging.getLogger("ray.tune").getEffectiveLevel() == logging.WARNING
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1" and "TUNE_PRINT_ALL_TRIAL_ERRORS" not in os.environ
    with sweep_view.quiet_tune(False):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"


def tiny_sweep_file(workdir: Path, name: str, hidden: list[int]) -> Path:
    """The quickstart's shape, reduced: a trial per `hidden` size of the tiny experiment, three epochs each
    (a negative size fails when the model is built)."""
    config = {**tiny_config(workdir), "name": name}
    config["trainer"] = {"max_epochs": 3, "accelerator": "cpu"}
    config["sweep"] = {
        "metric": "val/acc",
        "mode": "max",
        "num_samples": 1,  # a grid: one trial per size
        "space": {"model.hidden": {"grid": hidden}},
        "scheduler": {"name": "asha", "grace_period": 1},
        "resources": {"cpu": 1},
        "max_failures": 0,
        "storage": str(workdir / "sweeps"),
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def trial_events(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[") and "] trial " in line]


@pytest.mark.ray
def test_a_sweep_from_the_cli_prints_a_few_dozen_lines_and_verbose_gives_tunes_tables(workdir):
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", None)  # as a user's shell has it
    file = tiny_sweep_file(workdir, "tiny-view", [-2, 4, 8, 16])
    done = subprocess.run(
        [*PLEXLAB, "sweep", str(file)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert len(output.splitlines()) < 60, output
    events = trial_events(output)
    assert len(events) == 8 and sum(" started: model.hidden=" in line for line in events) == 4, events
    assert sum(" finished: " in line or " stopped early: " in line for line in events) == 3, events
    (failed,) = [line for line in events if " errored " in line]
    assert (
        "RuntimeError: Trying to create tensor with negative dimension -2" in failed and "error.txt" in failed
    )
    assert "Traceback" not in output  # the error file has it
    assert "4 trials; best val/acc" in done.stdout  # the final summary table stays
    assert "Trial status" not in output and "started with configuration" not in output

    file = tiny_sweep_file(workdir, "tiny-verbose", [4, 8])
    loud = subprocess.run(
        [*PLEXLAB, "sweep", str(file), "--verbose"], capture_output=True, text=True, timeout=300, env=env
    )
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "Trial status" in loud.stdout and "started with configuration" in loud.stdout
    assert trial_events(loud.stdout + loud.stderr) == []
    assert "2 trials; best val/acc" in loud.stdout
