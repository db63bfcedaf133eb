"""PDB files for the protein tests and the small shared structures they train on (imported, not collected)."""

from __future__ import annotations

import math
from pathlib import Path

# Small single-domain chains among the shared structure files (../shared/data/proteins).
SMALL = [
    "1l2y.pdb.gz",
    "pdb1ubi.pdb.gz",
    "1aki.pdb.gz",
    "3o5r.pdb.gz",
    "1k6p.pdb.gz",
    "5eil.pdb.gz",
    "2J9H-A.pdb.gz",
    "1gya.pdb.gz",
    "2axd.pdb.gz",
    "pdb1ejg.pdb.gz",
    "1dix.pdb.gz",
    "5zng.pdb.gz",
]


def atom(serial, name, resn, chain, resi, xyz, altloc=" ", icode=" ", het=False, elem="C") -> str:
    """One fixed-column ATOM (or HETATM) record."""
    rec = "HETATM" if het else "ATOM  "
    x, y, z = xyz
    return (
        f"{rec}{serial:5d} {name:<4s}{altloc}{resn:>3s} {chain}{resi:4d}{icode}   "
        f"{x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{0.0:6.2f}          {elem:>2s}"
    )


def helix(i: int) -> tuple[float, float, float]:
    """The i-th C-alpha position on an ideal alpha helix (100 degrees and 1.5 A per residue)."""
    return (2.3 * math.cos(i * 1.745), 2.3 * math.sin(i * 1.745), 1.5 * i)


def write_pdb(path: Path, residues, seqres=None, chain="A", extra=()) -> Path:
    """residues: list of (resn, resi, icode, het, altlocs) -> one CA (per altloc) each."""
    lines = []
    if seqres:
        for k in range(0, len(seqres), 13):
            names = " ".join(f"{n:>3s}" for n in seqres[k : k + 13])
            lines.append(f"SEQRES {k // 13 + 1:3d} {chain} {len(seqres):4d}  {names}")
    serial = 1
    for i, (resn, resi, icode, het, altlocs) in enumerate(residues):
        for j, alt in enumerate(altlocs):
            x, y, z = helix(i)
            lines.append(atom(serial, " N", resn, chain, resi, (x + 1, y, z), alt, icode, het, "N"))
            lines.append(atom(serial + 1, " CA", resn, chain, resi, (x + 3 * j, y, z), alt, icode, het))
            serial += 2
    lines += list(extra)
    lines.append("END")
    path.write_text("\n".join(lines) + "\n")
    return path


def plain(n: int, start: int = 1, name: str = "ALA") -> list[tuple]:
    """`n` ordinary residues numbered from `start`, in write_pdb's residue format."""
    return [(name, start + i, " ", False, " ") for i in range(n)]
