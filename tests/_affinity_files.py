"""Affinity pair tables and C-alpha structures written for the affinity tests (imported, not collected)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "OC(=O)c1ccccc1"]
SEQS = ["MKTAYIAKQR", "GSHMLEDPVW", "ACDEFGHIKLMNPQ"]


def write_tsv(path: Path, rows: list[tuple], extra_cols: tuple[str, ...] = ()) -> Path:
    """A pair table: columns smiles, protein_sequence, pKd, then `extra_cols`; one line per row."""
    cols = ("smiles", "protein_sequence", "pKd", *extra_cols)
    lines = ["\t".join(cols)] + ["\t".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def pairs(n: int, seed: int = 0) -> list[tuple]:
    """`n` valid (SMILES, sequence, pKd) rows; each protein appears with several compounds."""
    rng = np.random.default_rng(seed)
    return [
        (SMILES[i % len(SMILES)], SEQS[(i // 2) % len(SEQS)], round(float(rng.normal(6, 1)), 3))
        for i in range(n)
    ]


def write_ca_pdb(path: Path, xs: list[float]) -> None:
    """A PDB file of alanine C-alpha atoms on the x axis at `xs` (chain A, residues 1..n)."""
    lines = []
    for i, x in enumerate(xs, start=1):
        lines.append(f"ATOM  {i:5d}  CA  ALA A{i:4d}    {x:8.3f}{0.0:8.3f}{0.0:8.3f}  1.00  0.00           C")
    path.write_text("\n".join([*lines, "END"]) + "\n")
