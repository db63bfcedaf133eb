"""Test accuracy of HyperGCL (fabricated and generative views) and the feature MLP on co-citation Cora, mean
and std over splits, under either split protocol of the data module (`--protocol`):

- hypergcn (default): the 10 fixed HyperGCN splits (140 training nodes); the validation nodes are drawn from
  each split's test nodes by the data module (`val_fraction`), so the reported test nodes are never used for
  selection.
- random: the paper's protocol, 10 % train / 10 % validation / 80 % test random splits, one per split index
  (the paper reports 20: `--splits 0-19`).

Each (split, model) is one `plexlab.api.fit` run (recorded in MLflow), tested at the best validation epoch.
Runs go split by split (every model on split 0, then split 1, ...), so a stopped run's table compares the
models on the same splits. Every setting, the epochs included, comes from the
experiment files (sweeps/hypergcl_cora.yaml, sweeps/hypergcl_generative_cora.yaml, sweeps/node_mlp_cora.yaml)
unless `--epochs` overrides them. Runs happen in a fresh temporary directory (printed), so neither mlflow.db
nor checkpoints land in the repository.

    nice -n 5 .venv/bin/python tests/bench/hypergcl_cora_splits.py --splits 0-9 --threads 1
    nice -n 5 .venv/bin/python tests/bench/hypergcl_cora_splits.py --protocol random --splits 0-19

Prints one line per run as it finishes, then a markdown table.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = {
    "hypergcl": ROOT / "sweeps" / "hypergcl_cora.yaml",
    "hypergcl_generative": ROOT / "sweeps" / "hypergcl_generative_cora.yaml",
    "node_mlp": ROOT / "sweeps" / "node_mlp_cora.yaml",
}
LABELS = {
    "hypergcl": "HyperGCL, fabricated views",
    "hypergcl_generative": "HyperGCL, generative views",
    "node_mlp": "MLP on features (baseline)",
}


def parse_splits(text: str) -> list[int]:
    """'0-9' or '0,3,5' -> split indices."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def mean_std(values: list[float]) -> str:
    """'mean ± sample std' to three decimals."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="hypergcl,node_mlp,hypergcl_generative")
    parser.add_argument("--splits", default="0-9", help="'0-9' or '0,1,2'")
    parser.add_argument(
        "--protocol", choices=["hypergcn", "random"], default="hypergcn", help="split protocol"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override every file's trainer.max_epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "tests/bench/hypergcl_cora_splits.py", *sys.argv[1:]])

    torch.set_num_threads(args.threads)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from plexlab.api import fit

    models = args.models.split(",")
    splits = parse_splits(args.splits)
    configs = {m: yaml.safe_load(SWEEPS[m].read_text()) for m in models}
    epochs = {m: args.epochs or int(configs[m]["trainer"]["max_epochs"]) for m in models}
    workdir = Path(tempfile.mkdtemp(prefix="hypergcl_bench_"))
    os.chdir(workdir)  # mlflow.db and plexlab_runs/ go here, not into the repo
    print(f"working directory {workdir}", flush=True)

    test: dict[str, list[float]] = {m: [] for m in models}
    val: dict[str, list[float]] = {m: [] for m in models}
    seconds: dict[str, float] = {m: 0.0 for m in models}
    cpu: dict[str, float] = {m: 0.0 for m in models}
    started = time.time()
    # A stopped run (Ctrl-C, `kill PID`) still prints the table of the splits that finished.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run_all(models, splits, args.protocol, configs, epochs, test, val, seconds, cpu, fit)
    except KeyboardInterrupt:
        print("stopped: the table covers the finished runs only", flush=True)
    wall = time.time() - started

    protocol = "HyperGCN splits" if args.protocol == "hypergcn" else "random 10/10/80 splits"
    print(f"\nCo-citation Cora, {protocol} {args.splits}; test accuracy at the best validation epoch")
    print("| model | epochs | test accuracy | val accuracy | splits | time per split (CPU) |")
    print("|---|---|---|---|---|---|")
    for model in models:
        if not test[model]:
            continue
        print(
            f"| {LABELS[model]} (`{SWEEPS[model].relative_to(ROOT)}`) | {epochs[model]} | "
            f"{mean_std(test[model])} | {mean_std(val[model])} | {len(test[model])} | "
            f"{seconds[model] / len(test[model]):.0f} s ({cpu[model] / len(test[model]):.0f} s) |"
        )
    print(
        f"\nmean ± std over the splits; {os.cpu_count()} CPU cores, torch threads {args.threads}; "
        f"wall time {wall / 60:.1f} min\ncommand: {command}"
    )


def run_all(
    models: list[str],
    splits: list[int],
    protocol: str,
    configs: dict[str, dict],
    epochs: dict[str, int],
    test: dict[str, list[float]],
    val: dict[str, list[float]],
    seconds: dict[str, float],
    cpu: dict[str, float],
    fit: Callable[..., Any],
) -> None:
    """Fit every (split, model), appending to the result dicts as each run finishes."""
    for split in splits:
        for model in models:
            start, start_cpu = time.time(), time.process_time()
            overrides = {
                "data.protocol": protocol,
                "data.split": split,
                "data.path": str((ROOT / configs[model]["data"]["path"]).resolve()),
                "trainer.max_epochs": epochs[model],
            }
            r = fit(str(SWEEPS[model]), overrides=overrides)
            elapsed = time.time() - start
            seconds[model] += elapsed
            cpu[model] += time.process_time() - start_cpu
            test[model].append(r.metrics["test/acc"])
            val[model].append(r.best_score)
            print(
                f"{model} split {split}: test/acc {r.metrics['test/acc']:.4f} "
                f"best val/acc {r.best_score:.4f} ({elapsed:.0f} s, run {r.run_id})",
                flush=True,
            )


if __name__ == "__main__":
    main()
