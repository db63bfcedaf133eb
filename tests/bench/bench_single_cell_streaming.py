"""Single-cell streaming: cells/s and peak resident memory reading a large sparse .h5ad in backed mode.

Generates a cells x genes CSR count matrix (default 1,000,000 x 2,000 at 3% nonzeros, about 0.5 GB on disk)
in /tmp, written chunk by chunk with anndata's `write_elem`/`sparse_dataset(...).append` so generation never
holds the matrix in memory. Then, in a fresh subprocess (so its peak RSS is the reader's alone), builds
`SingleCellDataModule(path, backed=True, transforms={X: log1p}, ...)`, times `setup("fit")` (validation pass
over the counts, per-gene statistics, splits) and iterates the module's own `train_dataloader()` (shuffled
batches; each batch reads its sorted rows in one call), reporting cells/s and the peak RSS
(`resource.getrusage`), against the RSS of the same imports with no data. `--reps` reader processes (default
3) read the same file; the table shows the median cells/s and the largest peak RSS.

    .venv/bin/python tests/bench/bench_single_cell_streaming.py [--cells 1000000] [--quick] [--keep]

`--quick` = 200,000 cells and at most 300 batches. The generated file is removed unless `--keep` (also when
a reader fails).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(path: Path, cells: int, genes: int, density: float, chunk: int = 10_000, seed: int = 0) -> float:
    """Write a CSR count matrix with cell_type/batch obs columns, chunk by chunk; returns seconds."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import sparse_dataset, write_elem

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice([f"type{i}" for i in range(12)], cells)),
            "batch": pd.Categorical(rng.choice([f"batch{i}" for i in range(4)], cells)),
        },
        index=pd.Index([f"cell{i}" for i in range(cells)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene{j}" for j in range(genes)]))

    def block(n: int) -> sp.csr_matrix:
        mask = rng.random((n, genes), dtype=np.float32) < density
        rows, cols = np.nonzero(mask)
        data = rng.geometric(0.4, size=rows.size).astype(np.float32)  # counts >= 1
        return sp.csr_matrix((data, (rows, cols)), shape=(n, genes))

    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for key in ("uns", "obsm", "varm", "layers", "obsp", "varp"):
            write_elem(f, key, {})
        write_elem(f, "X", block(min(chunk, cells)))
        x = sparse_dataset(f["X"])
        for first in range(chunk, cells, chunk):
            x.append(block(min(chunk, cells - first)))
    ad.read_h5ad(path, backed="r").file.close()  # anndata reads it back
    return time.perf_counter() - start


def reader(path: str, batch_size: int, max_batches: int | None, threads: int) -> dict[str, float]:
    """In this (fresh) process: setup, then iterate the train loader; seconds, cells and peak RSS."""
    import torch
    from plexlab.datamodules.single_cell.datamodule import SingleCellDataModule

    torch.set_num_threads(threads)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    start = time.perf_counter()
    dm = SingleCellDataModule(
        path=path,
        backed=True,
        transforms={"X": "log1p"},
        cell_type_key="cell_type",
        batch_key="batch",
        batch_size=batch_size,
    )
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    start, cells, batches = time.perf_counter(), 0, 0
    for batch in dm.train_dataloader():
        cells += int(batch.x["X"].shape[0])
        batches += 1
        if max_batches and batches >= max_batches:
            break
    seconds = time.perf_counter() - start
    return {
        "setup_s": setup_s,
        "cells": cells,
        "train_cells": len(dm.train_idx),
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
        "import_rss_mib": base_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=None, help="default 1,000,000 (quick: 200,000)")
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--density", type=float, default=0.03)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-batches", type=int, default=None, help="stop the epoch early (quick: 300)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=None, help="reader processes (default 3, quick 2)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    parser.add_argument("--file", default=None, help="read this .h5ad instead of generating one")
    parser.add_argument("--_reader", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._reader:  # the measuring subprocess
        result = reader(args._reader, args.batch_size, args.max_batches, args.threads)
        print("RESULT " + json.dumps(result), flush=True)
        return

    cells = args.cells or (200_000 if args.quick else 1_000_000)
    max_batches = args.max_batches or (300 if args.quick else None)
    reps = args.reps or (2 if args.quick else 3)
    print(f"load before {os.getloadavg()[0]:.2f}", flush=True)
    if args.file:
        path, gen_s = Path(args.file), 0.0
    else:
        path = Path(tempfile.mkdtemp(prefix="sc_stream_")) / f"cells{cells}.h5ad"
    try:
        if not args.file:
            gen_s = generate(path, cells, args.genes, args.density)
            print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB) in {gen_s:.0f} s", flush=True)
        runs = []
        for rep in range(reps):
            cmd = [sys.executable, __file__, "--_reader", str(path), "--batch-size", str(args.batch_size)]
            cmd += ["--threads", str(args.threads)]
            cmd += ["--max-batches", str(max_batches)] if max_batches else []
            load = os.getloadavg()[0]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(out.stdout[-3000:], out.stderr[-3000:])
                raise SystemExit("the reader subprocess failed")
            r = json.loads(line.removeprefix("RESULT "))
            r["load"] = load
            runs.append(r)
            print(f"rep {rep}: {r}", flush=True)
        size = path.stat().st_size / 2**20
    finally:  # the file is large: never leave it behind, even when a reader fails
        if not args.keep and not args.file:
            path.unlink(missing_ok=True)
            path.parent.rmdir()

    keys = ("setup_s", "cells", "train_cells", "import_rss_mib")
    r = {k: statistics.median(x[k] for x in runs) for k in keys}
    rate = statistics.median(x["cells"] / x["seconds"] for x in runs)
    peak = max(x["peak_rss_mib"] for x in runs)
    loads = [x["load"] for x in runs] + [os.getloadavg()[0]]
    print(
        f"\nSingle-cell backed streaming: {cells:,} cells x {args.genes:,} genes, "
        f"{args.density:.0%} nonzeros "
        f"({size:.0f} MiB .h5ad, generated in {gen_s:.0f} s), batch {args.batch_size}, log1p transform; "
        f"{reps} reader processes, median cells/s, largest peak RSS; {os.cpu_count()} CPUs"
    )
    print(
        "| cells | file MiB | setup s | batches read | cells/s (train loader) | peak RSS MiB (max) "
        "| RSS after imports MiB | load (1 min) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {cells:,} | {size:.0f} | {r['setup_s']:.1f} | {int(r['cells']) // args.batch_size:,} "
        f"({r['cells'] / r['train_cells']:.0%} of an epoch) | {rate:,.0f} "
        f"| {peak:,.0f} | {r['import_rss_mib']:,.0f} "
        f"| {min(loads):.1f}-{max(loads):.1f} |"
    )
    print("Target: peak RSS < 2 GB (2,048 MiB).")


if __name__ == "__main__":
    main()
