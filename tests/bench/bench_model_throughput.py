"""Model throughput on CPU: training samples/s (forward + backward + optimizer step) of every model.

Each model is built the way the runner builds it (`plexlab.train.build`) from its experiment file in sweeps/,
on the small real data sets under ../shared/data (or the generated sparse-shift data for sVAE), with
overrides only where the file's default is a full-size model (the protein models get an ESM-2 8M-shaped
encoder and a 3 x 128 GNN instead of ESM-2 650M and 6 x 512). A plain Lightning Trainer (no logger,
checkpointing or validation) runs `warmup` steps, then `steps` timed steps; a callback times each training
batch from on_train_batch_start to on_train_batch_end, so data loading between batches is not counted.
Samples per step: the batch's rows (cells, pairs, images, proteins; all vertices for the full-batch
hypergraph models). A regression baseline: compare figures taken on the same machine and load.

    .venv/bin/python tests/bench/bench_model_throughput.py [--quick] [--models hypergcl,svae] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("PLEXLAB_SHARED_DATA", ROOT.parent / "shared" / "data"))
S = str(DATA)
SMALL_PROTEIN = {
    "model.esm_layers": 6,
    "model.esm_dim": 320,
    "model.esm_heads": 20,
    "model.gnn_dims": [128, 128, 128],
}

# model name -> (experiment file, overrides)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "hypergcl": ("hypergcl_cora.yaml", {"data.path": f"{S}/hypergraph/cocitation_cora"}),
    "node_mlp": ("node_mlp_cora.yaml", {"data.path": f"{S}/hypergraph/cocitation_cora"}),
    "svae": ("svae_sim.yaml", {}),
    "sailerx": ("sailerx_citeseq.yaml", {"data.path": f"{S}/single_cell/citeseq_citefuse_500cells.h5mu"}),
    "unitednet": ("unitednet_citeseq.yaml", {"data.path": f"{S}/single_cell/citeseq_citefuse_500cells.h5mu"}),
    "affinity_mlp": ("affinity_mlp_bindingdb.yaml", {"data.path": f"{S}/affinity/bindingdb_kd"}),
    "cpac": ("cpac_bindingdb.yaml", {"data.path": f"{S}/affinity/bindingdb_kd"}),
    "e2": ("e2_flickr8k.yaml", {"data.path": f"{S}/image_text/flickr8k_1k"}),
    "protein_mmcl": (
        "protein_mmcl_pretrain.yaml",
        {
            **SMALL_PROTEIN,
            "data.path": f"{S}/proteins/structures",
            "data.scop2_dir": f"{S}/proteins/scop2",
            "data.cache_dir": "protein_graph_cache",
        },
    ),
    "protein_function": (
        "protein_function_ec.yaml",
        {
            **SMALL_PROTEIN,
            "data.path": f"{S}/proteins/structures",
            "data.labels_file": f"{S}/proteins/deepfri_ec/nrPDB-EC_2020.04_annot.tsv",
            "data.cache_dir": "protein_graph_cache",
            "data.batch_size": 8,
        },
    ),
}


def samples(batch: Any) -> int:
    """Rows in a batch: its `size`, a dict of tensors, len(), per-modality x, or a whole graph."""
    size = getattr(batch, "size", None)
    if isinstance(size, int):  # e.g. AffinityBatch: pairs, not its first tensor's unique proteins
        return size
    if isinstance(batch, dict):
        return int(next(v for v in batch.values() if torch.is_tensor(v)).shape[0])
    if hasattr(batch, "graph") and hasattr(batch.graph, "num_nodes") and hasattr(batch, "train_mask"):
        return int(batch.graph.num_nodes)
    try:
        return len(batch)
    except TypeError:
        pass
    x = getattr(batch, "x", None)
    if isinstance(x, dict):
        return int(next(iter(x.values())).shape[0])
    if torch.is_tensor(x):
        return int(x.shape[0])
    if dataclasses.is_dataclass(batch):
        for f in dataclasses.fields(batch):
            v = getattr(batch, f.name)
            if torch.is_tensor(v) and v.ndim > 0:
                return int(v.shape[0])
    if isinstance(batch, list | tuple):
        return samples(batch[0])
    raise TypeError(f"cannot count samples in {type(batch).__name__}")


class BatchTimer(pl.Callback):
    """Seconds and samples of each training batch after the warm-up ones."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self.sizes: list[int] = []
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup or (
            not pl_module.automatic_optimization and batch_idx >= self.warmup
        ):
            self.times.append(time.perf_counter() - self._t)
            self.sizes.append(samples(batch))


def measure(name: str, warmup: int, steps: int) -> dict[str, Any]:
    from plexlab import train
    from plexlab.config import load

    cfg_file, overrides = MODELS[name]
    cfg = load(str(ROOT / "sweeps" / cfg_file), overrides)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    dm, model = train.build(cfg)
    setup_s = time.perf_counter() - t0
    timer = BatchTimer(warmup)
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        max_epochs=10_000,
        max_steps=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        default_root_dir="lightning_logs",
    )

    class Stop(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if len(timer.times) >= steps:
                trainer.should_stop = True

    trainer.callbacks.append(Stop())
    trainer.fit(model, datamodule=dm)
    params = sum(p.numel() for p in model.parameters())
    total = sum(timer.times)
    return {
        "model": name,
        "params": params,
        "batch": statistics.median(timer.sizes) if timer.sizes else 0,
        "steps": len(timer.times),
        "step_ms": 1000 * statistics.median(timer.times) if timer.times else float("nan"),
        # median over steps of the step's samples / seconds; the mean rate is the same figure unweighted
        "samples_s": statistics.median(n / t for n, t in zip(timer.sizes, timer.times, strict=True))
        if timer.times
        else float("nan"),
        "mean_samples_s": sum(timer.sizes) / total if total else float("nan"),
        "setup_s": setup_s,
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 warm-up + 5 timed steps (default 3 + 20)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    warmup, steps = (2, 5) if args.quick else (3, 20)
    print(f"load before {os.getloadavg()[0]:.2f}", flush=True)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.basicConfig(level=logging.ERROR)
    for n in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(n).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.chdir(tempfile.mkdtemp(prefix="plexlab_bench_models_"))

    rows = []
    for name in args.models.split(","):
        try:
            r = measure(name, warmup, steps)
        except Exception as exc:  # one broken model must not hide the others' figures
            r = {"model": name, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:120]}
        print(r, flush=True)
        rows.append(r)

    print(
        f"\nModel throughput on CPU, {warmup} warm-up + {steps} timed training steps, torch threads "
        f"{args.threads}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(
        "| model | parameters | samples/step | median step ms | samples/s (median over steps) "
        "| samples/s (total / time) | data setup s | load (1 min) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | failed: {r['error']} | | | | | | |")
            continue
        print(
            f"| {r['model']} | {r['params']:,} | {r['batch']:.0f} | {r['step_ms']:.1f} "
            f"| {r['samples_s']:,.1f} | {r['mean_samples_s']:,.1f} "
            f"| {r['setup_s']:.1f} | {r['load']:.1f} |"
        )


if __name__ == "__main__":
    main()
