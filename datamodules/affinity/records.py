"""What the affinity readers produce: each unique protein and compound featurized once, and the pairs that
point at them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from plexlab.datamodules.affinity.molecule import MolGraph


@dataclass
class ProteinEntry:
    """A unique protein: residue codes, amino-acid composition and its contact-graph edges."""

    residues: np.ndarray
    composition: np.ndarray
    edges: np.ndarray | None  # [2, E] from a structure or a supplied map; None: sequence band


@dataclass
class CompoundEntry:
    """A unique compound: its atom graph and Morgan fingerprint."""

    graph: MolGraph
    fingerprint: np.ndarray


@dataclass
class PairRecord:
    """One compound-protein pair: rows of the protein and compound tables, affinity, optional contacts."""

    protein: int
    compound: int
    target: float
    contacts: np.ndarray | None  # residues x heavy atoms
    source: str  # "<file stem>:<line or pdb>"
