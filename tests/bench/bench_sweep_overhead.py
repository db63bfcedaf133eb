"""Sweep overhead: wall time of an 8-trial `plexlab.api.sweep` vs the sum of its trials' own time.

A small HyperGCL on co-citation Cora (hidden 32, FIFO scheduler so every trial trains to the end, random
search over lr and dropout), 1 CPU per trial and 2 trials at a time on the 2 cores. Ray is started by the
script (timed: "Ray start") exactly as the platform starts it, then `api.sweep` runs on it; the wall time
covers Ray start, the sweep (MLflow parent run, trials, summary) and Ray shutdown. Trial times come from two
places: Tune's `time_total_s` (trial start to its last report, i.e. training) and the MLflow child runs'
start/end (the whole trial in the runner: build, train, test, artifacts). "Trial start" is the time from a
child run's creation to its first logged metric (data, model and Trainer set-up, sanity check, first step).

    .venv/bin/python tests/bench/bench_sweep_overhead.py [--quick] [--reps 2] [--trials 8] [--epochs 15]

Each repetition runs in a fresh temporary directory (its own mlflow.db and plexlab_sweeps/).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("PLEXLAB_SHARED_DATA", ROOT.parent / "shared" / "data"))


def config(trials: int, epochs: int, concurrency: int) -> dict[str, Any]:
    cfg = yaml.safe_load((ROOT / "sweeps" / "hypergcl_cora.yaml").read_text())
    cfg["name"] = "bench-sweep-overhead"
    cfg["data"]["path"] = str(DATA / "hypergraph" / "cocitation_cora")
    cfg["model"]["hidden"] = 32
    cfg["trainer"] = {"max_epochs": epochs, "accelerator": "cpu"}
    cfg["sweep"] = {
        "num_samples": trials,
        "space": {"model.lr": {"loguniform": [1.0e-4, 1.0e-2]}, "model.dropout": {"uniform": [0.0, 0.5]}},
        "scheduler": {"name": "fifo"},
        "search": {"name": "random"},
        "resources": {"cpu": 1, "gpu": 0, "workers": 1},
        "max_concurrent": concurrency,
    }
    return cfg


def one_sweep(cfg: dict[str, Any], concurrency: int) -> dict[str, Any]:
    import ray
    from mlflow.tracking import MlflowClient
    from plexlab import api, local_ray, schema
    from ray.tune import ExperimentAnalysis

    t0 = time.time()
    local_ray.start(None)  # the platform's own start (token, dashboard on 127.0.0.1), timed on its own
    t1 = time.time()
    try:
        result = api.sweep(cfg)
    finally:
        t2 = time.time()
        ray.shutdown()
    t3 = time.time()

    tune_total = [float(r["time_total_s"]) for r in ExperimentAnalysis(result.path).results.values() if r]
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`{schema.PARENT_RUN_ID}` = '{result.parent_run_id}'"
    )
    run_total, starts = [], []
    for child in children:
        run_total.append((child.info.end_time - child.info.start_time) / 1000)
        first = min(
            (m.timestamp for m in client.get_metric_history(child.info.run_id, "train/loss")),
            default=None,
        )
        if first is not None:
            starts.append((first - child.info.start_time) / 1000)
    first_trial = (min(c.info.start_time for c in children) / 1000) - t1
    parent_created = parent.info.start_time / 1000 - t1  # config, MLflow store and parent run ready
    return {
        "wall": t3 - t0,
        "ray_start": t1 - t0,
        "sweep": t2 - t1,
        "shutdown": t3 - t2,
        "tune_sum": sum(tune_total),
        "run_sum": sum(run_total),
        "trials": len(tune_total),
        "trial_start": statistics.median(starts) if starts else float("nan"),
        "first_trial": first_trial,
        "parent_created": parent_created,
        "trials_phase": t3 - t1 - first_trial,
        "concurrency": concurrency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, 8 epochs per trial")
    parser.add_argument("--reps", type=int, default=None, help="default 2 (quick 1)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=None, help="default 15 (quick 8)")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 2)
    epochs = args.epochs or (8 if args.quick else 15)

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    cfg = config(args.trials, epochs, args.concurrency)
    runs = []
    for rep in range(reps):
        workdir = Path(tempfile.mkdtemp(prefix="plexlab_bench_sweep_"))
        os.chdir(workdir)
        load = os.getloadavg()[0]
        r = one_sweep(cfg, args.concurrency)
        r["load"] = (load, os.getloadavg()[0])
        runs.append(r)
        print(f"rep {rep} in {workdir}: " + ", ".join(f"{k} {v}" for k, v in r.items()), flush=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    c = args.concurrency
    print(
        f"\nSweep overhead: {args.trials} trials of HyperGCL (hidden 32, {epochs} epochs) on Cora, "
        f"{c} at a time, "
        f"1 CPU each, {os.cpu_count()} CPUs; {reps} repetition(s), medians"
    )
    print(
        "| wall s | Ray start s | sum of trials s (Tune time_total_s) | sum of trials s (MLflow run) "
        "| wall / sum, Tune | wall / (sum/c), Tune | wall / (sum/c), MLflow "
        "| trials phase / (sum/c), Tune | trial start s (median) "
        "| parent run / first trial run after Ray start s | load (1 min) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    loads = [x for r in runs for x in r["load"]]
    print(
        f"| {med('wall'):.1f} | {med('ray_start'):.1f} | {med('tune_sum'):.1f} | {med('run_sum'):.1f} "
        f"| {med('wall') / med('tune_sum'):.2f} "
        f"| {med('wall') / (med('tune_sum') / c):.2f} | {med('wall') / (med('run_sum') / c):.2f} "
        f"| {med('trials_phase') / (med('tune_sum') / c):.2f} | {med('trial_start'):.1f} "
        f"| {med('parent_created'):.1f} / {med('first_trial'):.1f} "
        f"| {min(loads):.1f}-{max(loads):.1f} |"
    )
    print(
        "Target (issue 8): wall / sum of trials <= 1.3. Stricter, per slot: wall / (sum / concurrency), the "
        "time lost against the trials packed perfectly onto the cores. Trials phase = wall - Ray start - "
        "first trial's start (the fixed cost a longer sweep amortizes)."
    )


if __name__ == "__main__":
    main()
