"""RDKit featurization of compounds and simple protein composition features for affinity models.

RDKit is imported lazily (inside the functions), so importing this module is cheap and does not require RDKit
until a molecule is actually featurized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# One-hot vocabularies; the last slot of each is "other".
ELEMENTS = ("C", "N", "O", "S", "F", "P", "Cl", "Br", "I", "B", "Si", "Se")
DEGREES = (0, 1, 2, 3, 4, 5)
CHARGES = (-2, -1, 0, 1, 2)
HYBRIDIZATIONS = ("SP", "SP2", "SP3", "SP3D", "SP3D2")
NUM_HS = (0, 1, 2, 3, 4)
ATOM_DIM = (
    len(ELEMENTS)
    + 1
    + len(DEGREES)
    + 1
    + len(CHARGES)
    + 1
    + 1
    + len(HYBRIDIZATIONS)
    + 1
    + len(NUM_HS)
    + 1
    + 1
)
BOND_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# Accepted: the 20 standard residues, X (unknown), B/Z/J (ambiguous), U (selenocysteine), O (pyrrolysine).
PROTEIN_ALPHABET = frozenset(AMINO_ACIDS + "XBZJUO")
AA_INDEX = {a: i + 1 for i, a in enumerate(AMINO_ACIDS)}  # 0 is padding
UNKNOWN_AA = len(AMINO_ACIDS) + 1
PROTEIN_VOCAB = len(AMINO_ACIDS) + 2
COMPOSITION_DIM = len(AMINO_ACIDS) + len(AMINO_ACIDS) ** 2


class SmilesError(ValueError):
    """A SMILES string RDKit cannot parse or sanitize."""


@dataclass
class MolGraph:
    """A heavy-atom molecular graph.

    `x` holds one-hot atom features [n_atoms, ATOM_DIM]; `edges` the bonds as an [n_bonds, 2] int array (each
    bond once); `n_explicit_atoms` the atom count of the SMILES as written, explicit hydrogens included, and
    `heavy_index` the position of every heavy atom in that explicit order (to map contact maps whose columns
    follow the SMILES atoms, hydrogens included).
    """

    x: np.ndarray
    edges: np.ndarray
    n_explicit_atoms: int
    heavy_index: np.ndarray

    @property
    def n_atoms(self) -> int:
        """Number of heavy atoms (graph nodes)."""
        return int(self.x.shape[0])


def _one_hot(value: Any, choices: tuple, out: list[float]) -> None:
    vec = [0.0] * (len(choices) + 1)
    vec[choices.index(value) if value in choices else len(choices)] = 1.0
    out.extend(vec)


def _parse(smiles: str, lenient: bool) -> Any:
    """Parse with explicit hydrogens kept (for the atom order) and sanitize; raise SmilesError on failure."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # failures are reported through SmilesError, not RDKit's stderr
    params = Chem.SmilesParserParams()
    params.removeHs = False
    params.sanitize = False
    mol = Chem.MolFromSmiles(smiles, params)
    if mol is None or mol.GetNumAtoms() == 0:
        raise SmilesError(f"cannot parse SMILES {smiles[:60]!r}")
    try:
        Chem.SanitizeMol(mol)
    except Exception as exc:  # RDKit raises several exception types (valence, kekulization)
        if not lenient:
            raise SmilesError(f"invalid SMILES {smiles[:60]!r}: {str(exc).splitlines()[0]}") from None
        # Lenient: skip only the valence check (some structure-derived SMILES carry odd charges/valences).
        mol = Chem.MolFromSmiles(smiles, params)
        mol.UpdatePropertyCache(strict=False)
        flags = Chem.SanitizeFlags.SANITIZE_ALL ^ Chem.SanitizeFlags.SANITIZE_PROPERTIES
        if Chem.SanitizeMol(mol, flags, catchErrors=True) != Chem.SanitizeFlags.SANITIZE_NONE:
            raise SmilesError(f"invalid SMILES {smiles[:60]!r}: sanitization failed") from None
    return mol


def featurize_smiles(smiles: str, lenient: bool = False) -> MolGraph:
    """Heavy-atom graph of a SMILES: element, degree, charge, aromaticity, hybridization, H count, ring."""
    from rdkit import Chem

    mol = _parse(smiles, lenient)
    heavy_index = np.array([a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1], dtype=np.int64)
    n_explicit = mol.GetNumAtoms()
    heavy = Chem.RemoveHs(mol, sanitize=False)  # keeps the heavy atoms in their original order
    if heavy.GetNumAtoms() == 0:
        raise SmilesError(f"SMILES {smiles[:60]!r} has no heavy atoms")
    rows = []
    for atom in heavy.GetAtoms():
        feats: list[float] = []
        _one_hot(atom.GetSymbol(), ELEMENTS, feats)
        _one_hot(atom.GetDegree(), DEGREES, feats)
        _one_hot(atom.GetFormalCharge(), CHARGES, feats)
        feats.append(float(atom.GetIsAromatic()))
        _one_hot(str(atom.GetHybridization()), HYBRIDIZATIONS, feats)
        _one_hot(atom.GetTotalNumHs(), NUM_HS, feats)
        feats.append(float(atom.IsInRing()))
        rows.append(feats)
    x = np.asarray(rows, dtype=np.float32)
    edges = np.array(
        [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in heavy.GetBonds()], dtype=np.int64
    ).reshape(-1, 2)
    return MolGraph(x=x, edges=edges, n_explicit_atoms=n_explicit, heavy_index=heavy_index)


def morgan_fingerprint(smiles: str, radius: int = 2, n_bits: int = 2048, lenient: bool = False) -> np.ndarray:
    """Morgan (ECFP-like) bit vector of a SMILES as uint8 [n_bits]."""
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    mol = Chem.RemoveHs(_parse(smiles, lenient), sanitize=False)
    mol.UpdatePropertyCache(strict=False)
    Chem.GetSymmSSSR(mol)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = np.zeros(n_bits, dtype=np.uint8)
    DataStructs.ConvertToNumpyArray(gen.GetFingerprint(mol), out)
    return out


def protein_composition(sequence: str) -> np.ndarray:
    """Amino-acid (20) and dipeptide (400) composition, float32 [420]; non-standard letters ignored."""
    idx = np.array([AA_INDEX.get(a, 0) - 1 for a in sequence], dtype=np.int64)
    n = len(AMINO_ACIDS)
    aa = np.bincount(idx[idx >= 0], minlength=n).astype(np.float32)
    aa /= max(1.0, aa.sum())
    pairs = idx[:-1] * n + idx[1:]
    valid = (idx[:-1] >= 0) & (idx[1:] >= 0)
    di = np.bincount(pairs[valid], minlength=n * n).astype(np.float32)
    di /= max(1.0, di.sum())
    return np.concatenate([aa, di])


def encode_protein(sequence: str) -> np.ndarray:
    """Residue indices (1..20 standard, 21 for any other accepted letter), int64 [L]."""
    return np.array([AA_INDEX.get(a, UNKNOWN_AA) for a in sequence], dtype=np.int64)


def invalid_residue(sequence: str) -> str | None:
    """The first letter of `sequence` outside the protein alphabet, or None when all are valid."""
    for a in sequence:
        if a not in PROTEIN_ALPHABET:
            return a
    return None
