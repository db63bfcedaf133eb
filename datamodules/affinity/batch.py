"""The padded batch of compound-protein pairs that CPAC and AffinityMLP consume; records padded into one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from plexlab.datamodules.affinity.contacts import band_edges
from plexlab.datamodules.affinity.molecule import ATOM_DIM
from plexlab.datamodules.affinity.records import CompoundEntry, PairRecord, ProteinEntry


@dataclass
class AffinityBatch:
    """A padded batch of compound-protein pairs.

    P unique proteins (padded to L residues), B samples (compounds padded to A atoms).
    - residues [P, L] long (0 = padding), protein_mask [P, L] bool, protein_edges [2, E] long: directed edges
      (source, target) of the protein contact graphs as flat indices into the P*L grid (self loops included).
    - protein_of [B] long: row of each sample's protein.
    - atom_x [B, A, F] float, atom_mask [B, A] bool, atom_adj [B, A, A] float (bonds, symmetric, no self
      loops).
    - affinity [B] float; contacts [B, L, A] float (zeros where absent); has_contacts [B] bool.
    - fingerprint [B, bits] float, composition [B, 420] float (for the fingerprint baseline).
    - unseen_protein / unseen_compound [B] bool: not present in the training split.
    - subset: name of the split or file the batch comes from ("train", "val", "test", or a file stem).
    """

    residues: torch.Tensor
    protein_mask: torch.Tensor
    protein_edges: torch.Tensor
    protein_of: torch.Tensor
    atom_x: torch.Tensor
    atom_mask: torch.Tensor
    atom_adj: torch.Tensor
    affinity: torch.Tensor
    contacts: torch.Tensor
    has_contacts: torch.Tensor
    fingerprint: torch.Tensor
    composition: torch.Tensor
    unseen_protein: torch.Tensor
    unseen_compound: torch.Tensor
    index: torch.Tensor
    subset: str = "train"

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(self.affinity.shape[0])


@dataclass
class Collator:
    """Pads records into an `AffinityBatch` (proteins deduplicated, padding masked).

    Args:
        proteins: the protein table the records index.
        compounds: the compound table the records index.
        band_width: sequence-band half width for proteins without contact edges.
        train_proteins: proteins of the training split (the rest are "unseen").
        train_compounds: compounds of the training split.
    """

    proteins: list[ProteinEntry]
    compounds: list[CompoundEntry]
    band_width: int
    train_proteins: set[int]
    train_compounds: set[int]

    def __call__(
        self, records: list[PairRecord], subset: str, indices: list[int] | None = None
    ) -> AffinityBatch:
        """The batch of `records` from `subset`; `indices` (default 0..B-1) are their positions in it."""
        pids = list(dict.fromkeys(r.protein for r in records))
        prow = {p: i for i, p in enumerate(pids)}
        prots = [self.proteins[p] for p in pids]
        n_res = max(len(p.residues) for p in prots)
        residues = torch.zeros(len(prots), n_res, dtype=torch.long)
        edges = []
        for i, p in enumerate(prots):
            residues[i, : len(p.residues)] = torch.from_numpy(p.residues)
            e = p.edges if p.edges is not None else band_edges(len(p.residues), self.band_width)
            edges.append(torch.from_numpy(e) + i * n_res)
        comps = [self.compounds[r.compound] for r in records]
        n_atoms = max(c.graph.n_atoms for c in comps)
        bsz = len(records)
        atom_x = torch.zeros(bsz, n_atoms, ATOM_DIM)
        atom_mask = torch.zeros(bsz, n_atoms, dtype=torch.bool)
        atom_adj = torch.zeros(bsz, n_atoms, n_atoms)
        contacts = torch.zeros(bsz, n_res, n_atoms)
        has_contacts = torch.zeros(bsz, dtype=torch.bool)
        for b, (rec, comp) in enumerate(zip(records, comps, strict=True)):
            g = comp.graph
            atom_x[b, : g.n_atoms] = torch.from_numpy(g.x)
            atom_mask[b, : g.n_atoms] = True
            if len(g.edges):
                e = torch.from_numpy(g.edges)
                atom_adj[b, e[:, 0], e[:, 1]] = 1.0
                atom_adj[b, e[:, 1], e[:, 0]] = 1.0
            if rec.contacts is not None:
                c = torch.from_numpy(rec.contacts)
                contacts[b, : c.shape[0], : c.shape[1]] = c
                has_contacts[b] = True
        return AffinityBatch(
            residues=residues,
            protein_mask=residues > 0,
            protein_edges=torch.cat(edges, dim=1),
            protein_of=torch.tensor([prow[r.protein] for r in records], dtype=torch.long),
            atom_x=atom_x,
            atom_mask=atom_mask,
            atom_adj=atom_adj,
            affinity=torch.tensor([r.target for r in records], dtype=torch.float32),
            contacts=contacts,
            has_contacts=has_contacts,
            fingerprint=torch.from_numpy(np.stack([c.fingerprint for c in comps])).float(),
            composition=torch.from_numpy(np.stack([self.proteins[r.protein].composition for r in records])),
            unseen_protein=torch.tensor([r.protein not in self.train_proteins for r in records]),
            unseen_compound=torch.tensor([r.compound not in self.train_compounds for r in records]),
            index=torch.tensor(indices if indices is not None else list(range(bsz)), dtype=torch.long),
            subset=subset,
        )
