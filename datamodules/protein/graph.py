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

The cache stores, per structure file, everything the reader and featurizer produced (graphs and skip reasons),
keyed by the SHA-256 of the file's bytes and the settings, written atomically (tmp file + os.replace) and
validated on load: a file that does not load, or whose key or shapes disagree, is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from plexlab.datamodules.protein.reader import ChainRecord, ChainSkip, read_structure

log = logging.getLogger(__name__)

RESIDUE_TYPES = "ACDEFGHIKLMNPQRSTVWY"  # index 20 = anything else (X, B, Z, U, O)
NUM_RESIDUE_TYPES = len(RESIDUE_TYPES) + 1
_TYPE_INDEX = {a: i for i, a in enumerate(RESIDUE_TYPES)}
CACHE_FORMAT = 1  # bump when the reader or the featurizer changes what they produce


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


class GraphCache:
    """Featurized structure files on disk, one `.pt` per (file content, settings); counts hits and misses."""

    def __init__(self, cache_dir: str | Path | None, settings: GraphSettings) -> None:
        self.dir = None if cache_dir is None else Path(cache_dir)
        self.settings = settings
        self.hits = self.misses = self.rebuilt = 0

    def _key(self, digest: str) -> str:
        return hashlib.sha256(f"{digest}|{self.settings.key()}".encode()).hexdigest()[:32]

    def path_for(self, structure: Path) -> Path | None:
        if self.dir is None:
            return None
        return self.dir / f"{self._key(file_digest(structure))}.pt"

    def load(self, structure: str | Path) -> tuple[list[dict[str, object]], list[ChainSkip]]:
        """All chains of one file, featurized (cached when valid); DataError if the file is unusable."""
        structure = Path(structure)
        target = self.path_for(structure)
        if target is not None and target.exists():
            entry = self._read(target)
            if entry is not None:
                self.hits += 1
                graphs, skips = entry
                for g in graphs:  # the same content may sit under another name or folder
                    g["source"] = str(structure)
                    g["id"] = f"{structure.name}:{g['chain']}"
                return graphs, [ChainSkip(structure.name, c, r, d) for c, r, d in skips]
            self.rebuilt += 1
            log.warning("%s: corrupted graph cache entry %s, rebuilding", structure, target)
        self.misses += 1
        records, skips = read_structure(structure, min_residues=self.settings.min_residues)
        graphs = [featurize(r, self.settings) for r in records]
        if target is not None:
            self._write(target, graphs, skips)
        return graphs, skips

    def _write(self, target: Path, graphs: list[dict[str, object]], skips: list[ChainSkip]) -> None:
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

    def _read(self, target: Path) -> tuple[list[dict[str, object]], list[list[str]]] | None:
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
