"""Protein featurization: structures/s from gzipped PDB/mmCIF files to cached residue graphs, cold and warm.

Goes through the protein data module's own path: `ProteinDataModule(path=<folder>, cache_dir=<fresh dir>)`
then `setup("fit")` (read with gemmi, featurize each chain's residue graph, write one `.pt` per file to the
cache; warm: hash each file, load its cache entry). Cold runs use a new cache folder each time, once with
one featurizing process (`featurize_workers=1`) and once with the pool (`--workers`, default: the CPUs this
process may use), alternating within each repetition so both see the same machine load; the speed-up is
the ratio of their medians (a machine busy with other sessions cannot show it: Linux's autogroup
scheduling gives each session one share of the CPUs however many processes it runs, so the CPU seconds of
this process and of the workers are printed too, to show how the work divides). Warm runs reuse the last
cache with a new data module. Also times the cold stages per file (read, featurize, write) to show what
limits it. The input is the shared folder of 70 real structure files (`proteins/structures`).

    .venv/bin/python tests/bench/bench_protein_featurization.py [--quick] [--reps 3] [--workers N]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("PLEXLAB_SHARED_DATA", ROOT.parent / "shared" / "data"))


CPU: dict[str, list[float]] = {"parent": [], "workers": []}


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def setup_once(path: Path, cache: Path, workers: int | None = None) -> tuple[float, int, int]:
    """Seconds for one data module's setup("fit"), and the structure files and chains it saw. The CPU
    seconds of this process and of its (finished) worker processes go to CPU, to show how work divides."""
    from plexlab.datamodules.protein.datamodule import ProteinDataModule

    start, parent, children = time.perf_counter(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    dm = ProteinDataModule(path=str(path), cache_dir=str(cache), featurize_workers=workers)
    dm.setup("fit")
    seconds = time.perf_counter() - start
    CPU["parent"].append(_cpu(resource.RUSAGE_SELF) - parent)
    CPU["workers"].append(_cpu(resource.RUSAGE_CHILDREN) - children)
    return seconds, dm.cache.hits + dm.cache.misses, len(dm.items)


def stages(path: Path) -> dict[str, float]:
    """Cold seconds per stage, summed over files: hash, read (gemmi), featurize (graph edges), write (.pt)."""
    from plexlab.datamodules.protein.graph import GraphCache, GraphSettings, featurize, file_digest
    from plexlab.datamodules.protein.reader import is_structure_file, read_structure

    settings = GraphSettings(2, 10.0, 10, 5, 10)
    cache = GraphCache(tempfile.mkdtemp(prefix="protein_stage_cache_"), settings)
    out = {"hash": 0.0, "read": 0.0, "featurize": 0.0, "write": 0.0, "read_slowest": 0.0}
    slowest = ""
    for f in sorted(p for p in path.iterdir() if is_structure_file(p)):
        t0 = time.perf_counter()
        target = cache.path_for(f)
        file_digest(f)
        t1 = time.perf_counter()
        try:
            records, skips = read_structure(f, min_residues=settings.min_residues)
        except Exception:
            continue
        t2 = time.perf_counter()
        graphs = [featurize(r, settings) for r in records]
        t3 = time.perf_counter()
        cache._write(target, graphs, skips)
        t4 = time.perf_counter()
        out["hash"] += t1 - t0
        out["read"] += t2 - t1
        out["featurize"] += t3 - t2
        out["write"] += t4 - t3
        if t3 - t1 > out["read_slowest"]:
            out["read_slowest"], slowest = t3 - t1, f.name
    out["slowest_file"] = slowest  # type: ignore[assignment]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 repetitions instead of 3")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--path", default=str(DATA / "proteins" / "structures"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: CPU affinity)")
    args = parser.parse_args()
    reps = args.reps or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    path = Path(args.path)

    from plexlab.datamodules.protein.graph import default_workers

    workers = args.workers or default_workers()
    cold1, cold, warm, loads = [], [], [], []
    files = chains = 0
    for rep in range(reps):
        seconds, files, chains = setup_once(path, Path(tempfile.mkdtemp(prefix="protein_bench_cache_")), 1)
        cold1.append(seconds)
        cache = Path(tempfile.mkdtemp(prefix="protein_bench_cache_"))
        seconds, files, chains = setup_once(path, cache, workers)
        cold.append(seconds)
        for _ in range(2):
            seconds, _, _ = setup_once(path, cache)
            warm.append(seconds)
        loads.append(os.getloadavg()[0])
        p, k = CPU["parent"], CPU["workers"]
        print(
            f"rep {rep}: cold 1 worker {cold1[-1]:.2f} s (CPU {p[-4]:.1f} s), cold {workers} workers "
            f"{cold[-1]:.2f} s (CPU: this process {p[-3]:.1f} s, workers {k[-3]:.1f} s), "
            f"warm {warm[-2]:.3f} / {warm[-1]:.3f} s",
            flush=True,
        )
    parts = stages(path)

    c1, c, w = statistics.median(cold1), statistics.median(cold), statistics.median(warm)
    size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    print(
        f"\nProtein featurization, {files} structure files ({size:.1f} MiB gzipped, {chains} chains kept), "
        f"{reps} repetitions, medians; torch threads {args.threads}; {os.cpu_count()} CPUs"
    )
    print("| cache | seconds (70 files) | structures/s | chains/s | load (1 min) |")
    print("|---|---|---|---|---|")
    lo = f"{min(loads):.1f}-{max(loads):.1f}"
    print(f"| cold, 1 worker | {c1:.2f} | {files / c1:.1f} | {chains / c1:.1f} | {lo} |")
    print(f"| cold, {workers} workers | {c:.2f} | {files / c:.1f} | {chains / c:.1f} | {lo} |")
    print(f"| warm | {w:.3f} | {files / w:.1f} | {chains / w:.1f} | {lo} |")
    print(
        f"\nCold stages (one pass, summed over files): hash {parts['hash']:.2f} s, read (gemmi) "
        f"{parts['read']:.2f} s, featurize {parts['featurize']:.2f} s, write {parts['write']:.2f} s; "
        f"slowest file {parts['slowest_file']} ({parts['read_slowest']:.2f} s read+featurize)."
    )
    print(f"Cold speed-up with {workers} workers: {c1 / c:.2f}x (target >= 1.8x on 2 cores).")
    print("Target: >= 200 structures/s warm.")


if __name__ == "__main__":
    main()
