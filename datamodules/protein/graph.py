"""Residue graph featurizer (GearNet-style) and its on-disk cache.

Nodes are residues with a C-alpha atom; node feature is the residue type (index into `RESIDUE_TYPES`, X last).
Relations (edge_type), as in GearNet (7 relations with the defaults):
- 0 .. 2*max_offset: sequential, from residue j to i when seq_index[j] - seq_index[i] = d for d in
  -max_offset..max_offset (d = 0 is the self loop). Offsets are measured on the sequence, so residues on both
  sides of an unobserved gap are not sequential neighbours (GearNet uses node order; we chose the sequence).
- 2*max_offset + 1: radius, |x_i - x_j| < radius and |seq_index_i - seq_index_j| >= min_seq_sep.
- 2*max_offset + 2: kNN, j among the k nearest residues of i (self excluded), then kept only when
  |seq_index_i - seq_index_j| >= min_seq_sep (GearNet filters after choosing the k:
  fewer than k may remain).
Edges point from source (edge_index[0]) to target (edge_index[1]). The neighbour search is plain torch
(cdist + topk), no pyg-lib or torch-cluster.

Chains whose sequence is longer than `max_residues` are stored as nodes only: the model never sees more than a
`max_residues` window of them, so the data module builds the edges on the window it draws (as GearNet builds
its graph after truncating the protein). Memory then grows with `max_residues`, not with the chain.

The cache stores, per structure file, everything the reader and featurizer produced (graphs and skip reasons),
keyed by the SHA-256 of the file's bytes, the format detected from its content and the settings, written
atomically (tmp file + os.replace) and validated on load: a file that does not load, or whose key or shapes
disagree, is rebuilt. `GraphCache.load_many` featurizes the files the cache lacks in a pool of worker
processes (each writes its own entries), with a progress bar on a terminal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.protein.formats import structure_format
from plexlab.datamodules.protein.reader import ChainRecord, ChainSkip, read_structure

log = logging.getLogger(__name__)

RESIDUE_TYPES = "ACDEFGHIKLMNPQRSTVWY"  # index 20 = anything else (X, B, Z, U, O)
NUM_RESIDUE_TYPES = len(RESIDUE_TYPES) + 1
_TYPE_INDEX = {a: i for i, a in enumerate(RESIDUE_TYPES)}
CACHE_FORMAT = 2  # bump when the reader or the featurizer changes what they produce


def residue_type_index(seq: str) -> torch.Tensor:
    """Residue letters -> type indices (0..19 standard, 20 other)."""
    return torch.tensor([_TYPE_INDEX.get(a, 20) for a in seq], dtype=torch.long)


@dataclass(frozen=True)
class GraphSettings:
    """Featurizer settings: they are part of the cache key."""

    max_offset: int = 2
    radius: float = 10.0
    knn: int = 10
    min_seq_sep: int = 5
    min_residues: int = 10
    max_residues: int | None = 550  # longer chains: nodes only, edges built on the window (None: never)

    @property
    def num_relations(self) -> int:
        return 2 * self.max_offset + 3

    def key(self) -> str:
        return json.dumps({**asdict(self), "format": CACHE_FORMAT}, sort_keys=True)


def build_edges(
    pos: torch.Tensor, seq_index: torch.Tensor, s: GraphSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relational edges of one residue graph: (edge_index [2, E] as (source, target), edge_type [E])."""
    n = pos.shape[0]
    seq_index = seq_index.long()
    sep = seq_index[None, :] - seq_index[:, None]  # sep[i, j] = seq_j - seq_i
    srcs, dsts, types = [], [], []
    for r, d in enumerate(range(-s.max_offset, s.max_offset + 1)):
        tgt, src = torch.nonzero(sep == d, as_tuple=True)
        srcs.append(src)
        dsts.append(tgt)
        types.append(torch.full_like(src, r))
    dist = torch.cdist(pos.double(), pos.double())  # double: ties and the radius cut-off do not hinge on fp32
    far_in_seq = sep.abs() >= s.min_seq_sep
    tgt, src = torch.nonzero((dist < s.radius) & far_in_seq, as_tuple=True)
    srcs.append(src)
    dsts.append(tgt)
    types.append(torch.full_like(src, 2 * s.max_offset + 1))
    k = min(s.knn, n - 1)
    if k > 0:
        masked = dist + torch.diag(torch.full((n,), float("inf"), dtype=dist.dtype))
        nbr = masked.topk(k, dim=1, largest=False).indices  # [n, k]
        tgt = torch.arange(n).repeat_interleave(k)
        src = nbr.reshape(-1)
        keep = far_in_seq[tgt, src]
        srcs.append(src[keep])
        dsts.append(tgt[keep])
        types.append(torch.full_like(src[keep], 2 * s.max_offset + 2))
    edge_index = torch.stack([torch.cat(srcs), torch.cat(dsts)])
    return edge_index, torch.cat(types)


def window_edges(
    pos: torch.Tensor, seq_index: torch.Tensor, s: GraphSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """`build_edges` on one thread: the graph of a window of a long chain, built at each draw."""
    with _one_thread():
        return build_edges(pos, seq_index, s)


@contextlib.contextmanager
def _one_thread():
    """Run small tensor ops on one thread: on a busy machine intra-op threads made featurizing 6x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def featurize(rec: ChainRecord, s: GraphSettings) -> dict[str, object]:
    """One chain -> a plain dict of tensors (what the cache stores; the data module makes PyG Data)."""
    pos = torch.from_numpy(np.ascontiguousarray(rec.ca, dtype=np.float32))
    seq_index = torch.from_numpy(np.ascontiguousarray(rec.seq_index, dtype=np.int64))
    if s.max_residues is not None and len(rec.sequence) > s.max_residues:
        edge_index, edge_type = torch.empty((2, 0), dtype=torch.long), torch.empty(0, dtype=torch.long)
    else:
        with _one_thread():
            edge_index, edge_type = build_edges(pos, seq_index, s)
    node_letters = "".join(rec.sequence[i] for i in rec.seq_index)
    return {
        "id": rec.id,
        "source": rec.source,
        "pdb_id": rec.pdb_id,
        "chain": rec.chain,
        "sequence": rec.sequence,
        "seq_source": rec.seq_source,
        "notes": list(rec.notes),
        "pos": pos,
        "seq_index": seq_index,
        "x": residue_type_index(node_letters),
        "edge_index": edge_index,
        "edge_type": edge_type,
    }


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_workers() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a Slurm or container limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class GraphCache:
    """Featurized structure files on disk, one `.pt` per (file content, format, settings); counts hits and
    misses."""

    def __init__(self, cache_dir: str | Path | None, settings: GraphSettings) -> None:
        self.dir = None if cache_dir is None else Path(cache_dir)
        self.settings = settings
        self.hits = self.misses = self.rebuilt = 0

    def _key(self, digest: str, fmt: str) -> str:
        return hashlib.sha256(f"{digest}|{fmt}|{self.settings.key()}".encode()).hexdigest()[:32]

    def path_for(self, structure: Path) -> Path | None:
        """The cache entry of a file (None without a cache folder); DataError if it is not a structure."""
        if self.dir is None:
            return None
        fmt = structure_format(structure)  # before hashing: a non-structure fails here, with its kind
        return self.dir / f"{self._key(file_digest(structure), fmt)}.pt"

    def load(self, structure: str | Path) -> tuple[list[dict[str, object]], list[ChainSkip]]:
        """All chains of one file, featurized (cached when valid); DataError if the file is unusable."""
        (result,) = self.load_many([Path(structure)])
        if isinstance(result, DataError):
            raise result
        return result

    def load_many(
        self, structures: list[Path], workers: int = 1
    ) -> list[tuple[list[dict[str, object]], list[ChainSkip]] | DataError]:
        """`load` of many files, in order, a DataError in place of each unusable file. Files the cache lacks
        are featurized by `workers` processes (1: in this process); a progress bar shows on a terminal."""
        from tqdm.auto import tqdm

        results: list = [None] * len(structures)
        todo: list[tuple[int, Path, Path | None]] = []
        with tqdm(
            total=len(structures),
            desc="protein structures",
            unit="file",
            disable=not sys.stderr.isatty(),
            delay=0.5,
            leave=False,
        ) as bar:
            for i, structure in enumerate(structures):
                try:
                    target = self.path_for(structure)
                    results[i] = self._cached(structure, target)
                except DataError as exc:
                    results[i] = exc
                if results[i] is None:
                    todo.append((i, structure, target))
                else:
                    bar.update()
            self.misses += len(todo)
            if workers > 1 and len(todo) > 1 and self.dir is not None:
                self._build_in_pool(todo, min(workers, len(todo)), results, bar)
            else:
                for i, structure, target in todo:
                    results[i] = _build(structure, target, self.settings)
                    bar.update()
        return results

    def _build_in_pool(self, todo, workers: int, results: list, bar) -> None:
        # fork (Linux) starts workers at once with everything imported, as DataLoader workers do; spawn
        # elsewhere. Largest files first, so one big file does not finish alone at the end.
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        order = sorted(todo, key=lambda job: -job[1].stat().st_size)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            jobs = {pool.submit(_build_entry, s, t, self.settings): (i, s, t) for i, s, t in order}
            for job in as_completed(jobs):
                i, structure, target = jobs[job]
                failure = job.result()
                if failure is not None:
                    results[i] = DataError(*failure)
                else:  # the worker wrote the entry: read it back (fast, and validated like any hit)
                    entry = self._read(target)
                    results[i] = (
                        _build(structure, target, self.settings)
                        if entry is None
                        else _named(structure, entry)
                    )
                bar.update()

    def _cached(self, structure: Path, target: Path | None):
        """(graphs, skips) from a valid cache entry, else None (a corrupted entry is counted and logged)."""
        if target is None or not target.exists():
            return None
        entry = self._read(target)
        if entry is None:
            self.rebuilt += 1
            log.warning("%s: corrupted graph cache entry %s, rebuilding", structure, target)
            return None
        self.hits += 1
        return _named(structure, entry)

    @staticmethod
    def _write(target: Path, graphs: list[dict[str, object]], skips: list[ChainSkip]) -> None:
        _write_entry(target, graphs, skips)

    @staticmethod
    def _read(target: Path) -> tuple[list[dict[str, object]], list[list[str]]] | None:
        try:
            payload = torch.load(target, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or payload.get("key") != target.stem:
                return None
            graphs = payload["graphs"]
            for g in graphs:
                n = g["pos"].shape[0]
                ok = (
                    g["pos"].shape == (n, 3)
                    and g["seq_index"].shape == (n,)
                    and g["x"].shape == (n,)
                    and g["edge_index"].shape[0] == 2
                    and g["edge_index"].shape[1] == g["edge_type"].shape[0]
                    and (n == 0 or int(g["seq_index"].max()) < len(g["sequence"]))
                    and (g["edge_index"].numel() == 0 or int(g["edge_index"].max()) < n)
                )
                if not ok:
                    return None
            return graphs, payload["skips"]
        except Exception as exc:  # any unreadable/garbled file is a cache miss, never a crash
            log.debug("cache read failed for %s: %s", target, exc)
            return None


def _named(structure: Path, entry) -> tuple[list[dict[str, object]], list[ChainSkip]]:
    """A cache entry's graphs and skips under this file's name (the same content may sit under another)."""
    graphs, skips = entry
    for g in graphs:
        g["source"] = str(structure)
        g["id"] = f"{structure.name}:{g['chain']}"
    return graphs, [ChainSkip(structure.name, c, r, d) for c, r, d in skips]


def _build(structure: Path, target: Path | None, settings: GraphSettings):
    """Read and featurize one file in this process, writing its entry; a DataError is returned, not raised."""
    try:
        records, skips = read_structure(structure, min_residues=settings.min_residues)
    except DataError as exc:
        return exc
    graphs = [featurize(r, settings) for r in records]
    if target is not None:
        _write_entry(target, graphs, skips)
    return graphs, skips


def _build_entry(structure: Path, target: Path, settings: GraphSettings) -> tuple[str, str] | None:
    """Worker process: featurize one file into its cache entry; (source, problem) when it is unusable
    (DataError itself does not survive pickling: its constructor takes two arguments)."""
    out = _build(structure, target, settings)
    return (out.source, out.problem) if isinstance(out, DataError) else None


def _write_entry(target: Path, graphs: list[dict[str, object]], skips: list[ChainSkip]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "key": target.stem,
        "graphs": graphs,
        "skips": [[s.chain, s.reason, s.detail] for s in skips],
    }
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, target)  # atomic: readers see the old file or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
