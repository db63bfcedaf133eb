"""Platform overhead: training steps/s of `plexlab.api.fit` (MLflow on, embedded store) vs a bare loop.

Both sides build the same data module and model (`plexlab.train.build`, same seed), take the same optimizer
steps on the same batches and run the same validation every epoch (the model's own `training_step`,
`validation_step` and epoch hooks; `self.log` is a no-op without a Trainer). Only the training phase is timed:
on the platform side a Lightning callback from `on_train_start` to `on_train_end` (after the sanity check,
before test and artifact logging), injected into the Trainer that `api.fit` builds; on the bare side the epoch
loop. Two workloads: a full-batch model (HyperGCL on co-citation Cora, one step per epoch) and a minibatch
model (sVAE+ on the generated sparse-shift data, 256 cells per step). One short untimed run of each side
first (imports, allocator and first-checkpoint costs), then repetitions in alternating order; the table shows
medians of wall time and of this process's CPU time (the steadier figure when other processes share the
cores).

    .venv/bin/python tests/bench/bench_platform_overhead.py [--quick] [--reps 5] [--threads 1]

Runs in a fresh temporary directory, so mlflow.db and plexlab_runs/ never land in the repository.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import lightning.pytorch as pl
import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("PLEXLAB_SHARED_DATA", ROOT.parent / "shared" / "data"))

WORKLOADS: dict[str, dict[str, Any]] = {
    "hypergcl / Cora (full batch)": {
        "config": ROOT / "sweeps" / "hypergcl_cora.yaml",  # hidden 64: a step in seconds, not minutes
        "overrides": {"data.path": str(DATA / "hypergraph" / "cocitation_cora"), "model.hidden": 64},
        "epochs": 30,
        "quick_epochs": 10,
    },
    "svae+ / simulated (minibatch 256)": {
        "config": ROOT / "sweeps" / "svae_sim.yaml",
        "overrides": {},
        "epochs": 10,  # about 79 steps an epoch
        "quick_epochs": 3,
    },
}


class TrainTimer(pl.Callback):
    """Wall time and optimizer steps between on_train_start and on_train_end."""

    def __init__(self) -> None:
        self.seconds = self.cpu = 0.0
        self.steps = 0
        self._start = self._cpu = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self._start
        self.cpu = time.process_time() - self._cpu
        self.steps = trainer.global_step


def platform_run(config: Path, overrides: dict[str, Any]) -> tuple[int, float, float]:
    """`plexlab.api.fit` with a timing callback added to the Trainer hooks the runner builds."""
    from plexlab import api, train

    timer = TrainTimer()
    original = train.TrainerHooks

    def hooks_with_timer(**kwargs: Any) -> train.TrainerHooks:
        hooks = original(**kwargs)
        hooks.callbacks = [*hooks.callbacks, timer]
        return hooks

    with mock.patch.object(train, "TrainerHooks", hooks_with_timer):
        api.fit(str(config), overrides=overrides)
    return timer.steps, timer.seconds, timer.cpu


def lightning_run(config: Path, overrides: dict[str, Any]) -> tuple[int, float, float]:
    """A plain Lightning Trainer (no logger, no checkpointing, no progress bar): Lightning's own share."""
    from plexlab import train
    from plexlab.config import load

    cfg = load(str(config), overrides)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm, model = train.build(cfg)
    timer = TrainTimer()
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        default_root_dir=str(Path.cwd() / "lightning_only"),
        **cfg.trainer,
    )
    trainer.fit(model, datamodule=dm)
    return timer.steps, timer.seconds, timer.cpu


def _optimizer(model: pl.LightningModule) -> torch.optim.Optimizer:
    opt = model.configure_optimizers()
    if isinstance(opt, dict):
        opt = opt["optimizer"]
    if isinstance(opt, list | tuple):
        opt = opt[0]
    return opt


def bare_run(config: Path, overrides: dict[str, Any]) -> tuple[int, float, float]:
    """The same model, data, batches and steps in a plain loop: zero_grad, training_step, backward, step;
    then the model's validation pass once per epoch."""
    from plexlab import train
    from plexlab.config import load

    cfg = load(str(config), overrides)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm, model = train.build(cfg)
    if not model.automatic_optimization:
        raise SystemExit(f"{cfg.model_name} uses manual optimization; the bare loop does not cover it")
    opt = _optimizer(model)
    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    epochs = int(cfg.trainer["max_epochs"])
    steps = 0
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        model.train()
        model.on_train_epoch_start()
        for i, batch in enumerate(train_loader):
            opt.zero_grad(set_to_none=True)
            loss = model.training_step(batch, i)
            loss.backward()
            opt.step()
            steps += 1
        model.on_train_epoch_end()
        model.eval()
        with torch.no_grad():
            model.on_validation_epoch_start()
            for i, batch in enumerate(val_loader):
                model.validation_step(batch, i)
            model.on_validation_epoch_end()
    return steps, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and 3 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5, quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both sides)")
    parser.add_argument("--only", default=None, help="substring of one workload's name")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 5)

    torch.set_num_threads(args.threads)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.basicConfig(level=logging.ERROR)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    workdir = Path(tempfile.mkdtemp(prefix="plexlab_bench_overhead_"))
    os.chdir(workdir)
    print(f"working directory {workdir}; load before {os.getloadavg()[0]:.2f}", flush=True)

    rows = []
    for name, w in WORKLOADS.items():
        if args.only and args.only not in name:
            continue
        epochs = w["quick_epochs"] if args.quick else w["epochs"]
        overrides = {**w["overrides"], "trainer.max_epochs": epochs}
        rate: dict[str, list[float]] = {"platform": [], "lightning": [], "bare": []}
        cpu_rate: dict[str, list[float]] = {"platform": [], "lightning": [], "bare": []}
        loads = []
        order = [("platform", platform_run), ("lightning", lightning_run), ("bare", bare_run)]
        for _, fn in order:  # warm-up, not timed
            fn(w["config"], {**w["overrides"], "trainer.max_epochs": 2})
        for rep in range(reps):
            for side, fn in order if rep % 2 == 0 else order[::-1]:
                steps, seconds, cpu = fn(w["config"], overrides)
                rate[side].append(steps / seconds)
                cpu_rate[side].append(steps / cpu)
                loads.append(os.getloadavg()[0])
                print(
                    f"{name} rep {rep} {side}: {steps} steps in {seconds:.2f} s ({cpu:.2f} CPU s)", flush=True
                )
        ratios = [p / b for p, b in zip(rate["platform"], rate["bare"], strict=True)]
        cpu_ratios = [p / b for p, b in zip(cpu_rate["platform"], cpu_rate["bare"], strict=True)]
        med = {k: statistics.median(v) for k, v in rate.items()}
        med.update({f"cpu_{k}": statistics.median(v) for k, v in cpu_rate.items()})
        rows.append((name, epochs, med, ratios, cpu_ratios, loads))

    print(
        f"\nPlatform overhead (training phase only), {reps} repetitions, medians; "
        f"torch threads {args.threads};"
        f" {os.cpu_count()} CPUs; Python {sys.version.split()[0]}, torch {torch.__version__}"
    )
    print(
        "| workload | epochs | clock | api.fit steps/s | plain Lightning steps/s | bare loop steps/s "
        "| api.fit / bare (median) | per repetition | load (1 min) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, epochs, r, ratios, cpu_ratios, loads in rows:
        for clock, pre, rs in (("wall", "", ratios), ("CPU", "cpu_", cpu_ratios)):
            each = ", ".join(f"{x:.3f}" for x in rs)
            print(
                f"| {name} | {epochs} | {clock} | {r[pre + 'platform']:.2f} | {r[pre + 'lightning']:.2f} "
                f"| {r[pre + 'bare']:.2f} | {statistics.median(rs):.3f} | {each} "
                f"| {min(loads):.1f}-{max(loads):.1f} |"
            )
    print("CPU = steps per second of this process's CPU time (less sensitive to other processes' load).")
    print("Target: ratio >= 0.95.")


if __name__ == "__main__":
    main()
