"""Positive views for multi-modal contrastive pretraining of proteins.

A view is a (sequence, residue graph) pair. A view spec is a `+`-joined string of one partner choice and
optional transforms, applied left to right:
- partner: `identity` (the protein itself), `family` (another protein with a shared family label),
  `superfamily` (another protein with a shared superfamily label);
- transform: `crop` (a random contiguous window of `crop_length` sequence positions; the subgraph keeps the
  residues observed in that window and the edges among them, so sequence and structure stay aligned).
`crop` alone means `identity+crop`. Two views of an anchor: the anchor itself (cropped when the spec crops)
and the partner (cropped independently). When a family/superfamily partner does not exist, the sampler falls
back to the anchor itself (`fallback`, default `identity`), keeping the spec's transforms, and counts it.
Partners are drawn from the anchor's own pool (its split: train, val or test) when the sampler is given pools,
so a validation pair never uses a training protein, nor a training pair a held-out one.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch_geometric.data import Data
from torch_geometric.utils import subgraph

PARTNERS = ("identity", "family", "superfamily")
TRANSFORMS = ("crop",)


@dataclass
class ProteinView:
    """One view: sequence string and its residue graph (graph.residue_pos indexes the sequence).

    (`residue_pos`, not `seq_index`: PyG shifts attributes whose name contains "index" when batching.)
    """

    id: str
    sequence: str
    graph: Data | None


def parse_view(spec: str) -> tuple[str, list[str]]:
    """'family+crop' -> ('family', ['crop']); raises ValueError on unknown parts."""
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    partner = "identity"
    transforms: list[str] = []
    for p in parts:
        if p in PARTNERS:
            partner = p
        elif p in TRANSFORMS:
            transforms.append(p)
        else:
            raise ValueError(
                f"unknown view part {p!r} in {spec!r} (partners {PARTNERS}, transforms {TRANSFORMS})"
            )
    return partner, transforms


def crop_view(view: ProteinView, length: int, rng: random.Random) -> ProteinView:
    """Random contiguous window of `length` sequence positions and the matching subgraph (re-indexed)."""
    n = len(view.sequence)
    if n <= length:
        return view
    g = view.graph
    start = rng.randrange(n - length + 1)
    if g is not None:
        for _ in range(10):  # windows inside an unobserved stretch have no nodes: draw again
            if bool(((g.residue_pos >= start) & (g.residue_pos < start + length)).any()):
                break
            start = rng.randrange(n - length + 1)
        else:  # centre the window on an observed residue
            centre = int(g.residue_pos[rng.randrange(g.num_nodes)])
            start = max(0, min(n - length, centre - length // 2))
    seq = view.sequence[start : start + length]
    if g is None:
        return ProteinView(view.id, seq, None)
    keep = (g.residue_pos >= start) & (g.residue_pos < start + length)
    edge_index, edge_attr = subgraph(
        keep, g.edge_index, g.edge_type, relabel_nodes=True, num_nodes=g.num_nodes
    )
    sub = Data(
        x=g.x[keep],
        pos=g.pos[keep],
        residue_pos=g.residue_pos[keep] - start,
        edge_index=edge_index,
        edge_type=edge_attr,
        num_nodes=int(keep.sum()),
    )
    return ProteinView(view.id, seq, sub)


class ViewSampler:
    """Draws positive pairs for an anchor index according to a list of view specs (one spec per draw).

    views: the view specs, one drawn at random per pair.
    families / superfamilies: `families[i]` is the label set of protein i (empty: unlabelled).
    crop_length: window length of the `crop` transform.
    fallback: partner used when a family/superfamily partner does not exist.
    pools: named sets of protein indices (the splits); `sample(..., pool=name)` draws partners from that pool
        only. Without pools, or with `pool=None`, partners come from every protein.
    """

    def __init__(
        self,
        views: list[str],
        families: list[list[str]],
        superfamilies: list[list[str]],
        crop_length: int = 50,
        fallback: str = "identity",
        pools: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        if not views:
            raise ValueError("views: give at least one view spec")
        self.specs = [parse_view(v) for v in views]
        self.views = list(views)
        self.crop_length = crop_length
        self.fallback = parse_view(fallback)[0]
        self.labels = {"family": families, "superfamily": superfamilies}
        everyone = range(len(families))
        # members[pool][level][label]: the proteins of that pool with that label (pool None: all proteins)
        self.members: dict[str | None, dict[str, dict[str, list[int]]]] = {
            None: self._index(everyone),
            **{name: self._index(sorted(set(idx))) for name, idx in (pools or {}).items()},
        }
        self.fallbacks = 0

    def _index(self, proteins: Sequence[int]) -> dict[str, dict[str, list[int]]]:
        out: dict[str, dict[str, list[int]]] = {}
        for level, per_protein in self.labels.items():
            index: dict[str, list[int]] = defaultdict(list)
            for i in proteins:
                for lab in per_protein[i]:
                    index[lab].append(i)
            out[level] = index
        return out

    def partner(self, anchor: int, level: str, rng: random.Random, pool: str | None = None) -> int | None:
        """Another protein of `pool` sharing a `level` label with the anchor, or None."""
        if level == "identity":
            return anchor
        if pool not in self.members:
            raise KeyError(f"no pool {pool!r} (pools: {sorted(k for k in self.members if k)})")
        members = self.members[pool][level]
        cands = sorted({j for lab in self.labels[level][anchor] for j in members.get(lab, ()) if j != anchor})
        return rng.choice(cands) if cands else None

    def sample(
        self, anchor: int, get_view, rng: random.Random, pool: str | None = None
    ) -> tuple[ProteinView, ProteinView, str]:
        """(view of the anchor, view of its partner, spec used); `get_view(i)` gives protein i's full view.

        The partner comes from `pool` (the anchor's split) when given.
        """
        k = rng.randrange(len(self.specs))
        partner_kind, transforms = self.specs[k]
        other = self.partner(anchor, partner_kind, rng, pool)
        if other is None:
            self.fallbacks += 1
            other = self.partner(anchor, self.fallback, rng, pool)
            other = anchor if other is None else other
        a, b = get_view(anchor), get_view(other)
        for t in transforms:
            if t == "crop":
                a = crop_view(a, self.crop_length, rng)
                b = crop_view(b, self.crop_length, rng)
        return a, b, self.views[k]
