"""One very long protein chain through the protein data module: peak memory and seconds at default settings.

Writes a synthetic mmCIF file with one chain of N C-alpha residues (helices of 20 residues packed on a
grid, so each residue has a protein-like number of neighbours within 10 A; mmCIF because PDB residue numbers
stop at 9999), then, in a fresh child process per length: `ProteinDataModule(path=<file>,
cache_dir=<fresh dir>)`, `setup("fit")` (read, featurize, write the cache) and the first training batch
(the `max_residues` window the model sees, with its residue graph). The child reports its peak RSS
(`ru_maxrss`) and the RSS right after the imports, so the figure is what the chain itself costs on top of
torch, gemmi and Lightning. Default settings: `max_residues` 550, radius 10 A, kNN 10, offsets -2..2.

    .venv/bin/python tests/bench/bench_long_chain.py [--lengths 1000,10000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[3]))
from plexlab.datamodules.protein.datamodule import ProteinDataModule
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t1 = time.perf_counter()
dm = ProteinDataModule(path=sys.argv[1], cache_dir=sys.argv[2], views=["crop"], batch_size=1)
dm.setup("fit")
t2 = time.perf_counter()
batch = next(iter(dm.train_dataloader()))
t3 = time.perf_counter()
print(json.dumps({
    "imports_s": t1 - t0, "setup_s": t2 - t1, "batch_s": t3 - t2,
    "base_mib": base, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "nodes": int(dm.items[0]["pos"].shape[0]), "batch_nodes": int(batch.a.graph.num_nodes),
    "batch_edges": int(batch.a.graph.edge_index.shape[1]),
}))
"""


def helix_bundle(n: int) -> list[tuple[float, float, float]]:
    """C-alpha positions: helices of 20 residues (rise 1.5 A, radius 2.3 A) on a grid 10 A apart."""
    per_side = max(1, math.ceil((n / 20) ** (1 / 3)))
    out = []
    for i in range(n):
        h, k = divmod(i, 20)
        gx, rest = divmod(h, per_side * per_side)
        gy, gz = divmod(rest, per_side)
        up = k if h % 2 == 0 else 19 - k  # consecutive helices run antiparallel, like a real bundle
        angle = up * 100 * math.pi / 180
        out.append((gx * 10 + 2.3 * math.cos(angle), gy * 10 + 2.3 * math.sin(angle), gz * 32 + 1.5 * up))
    return out


def write_chain(path: Path, n: int) -> Path:
    """A one-chain mmCIF file with N alanines (C-alpha only)."""
    head = [
        "data_long",
        "loop_",
        *(
            f"_atom_site.{c}"
            for c in (
                "group_PDB id type_symbol label_atom_id label_alt_id label_comp_id label_asym_id "
                "label_seq_id auth_seq_id auth_asym_id Cartn_x Cartn_y Cartn_z occupancy B_iso_or_equiv "
                "pdbx_PDB_model_num"
            ).split()
        ),
    ]
    rows = [
        f"ATOM {i + 1} C CA . ALA A {i + 1} {i + 1} A {x:.3f} {y:.3f} {z:.3f} 1.00 0.00 1"
        for i, (x, y, z) in enumerate(helix_bundle(n))
    ]
    path.write_text("\n".join([*head, *rows]) + "\n")
    return path


def measure(n: int, threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="long_chain_") as tmp:
        f = write_chain(Path(tmp) / f"long{n}.cif", n)
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(f), str(Path(tmp) / "cache"), str(threads)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"child failed for {n} residues:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1000,10000", help="comma-separated chain lengths")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in the child")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; torch threads {args.threads}")
    print("| residues | setup s | first batch s | peak RSS MiB | RSS after imports MiB | chain costs MiB |")
    print("|---|---|---|---|---|---|")
    for n in (int(x) for x in args.lengths.split(",")):
        r = measure(n, args.threads)
        print(
            f"| {n:,} | {r['setup_s']:.2f} | {r['batch_s']:.2f} | {r['peak_mib']:.0f} | {r['base_mib']:.0f} "
            f"| {r['peak_mib'] - r['base_mib']:.0f} |",
            flush=True,
        )
    print(f"load after: {os.getloadavg()[0]:.1f}. Goal: 10,000 residues under 1 GB and 3 s.")


if __name__ == "__main__":
    main()
