"""Protein contact graphs (from a structure, a supplied map or the sequence band) and contact-map files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from plexlab.datamodules.errors import DataError


def band_edges(length: int, width: int) -> np.ndarray:
    """Edges (both directions and self loops) between residues at most `width` apart in sequence, [2, E]."""
    idx = np.arange(length)
    src, dst = [], []
    for off in range(-width, width + 1):
        ok = (idx + off >= 0) & (idx + off < length)
        src.append(idx[ok] + off)
        dst.append(idx[ok])
    return np.stack([np.concatenate(src), np.concatenate(dst)]).astype(np.int64)


def contact_edges(cmap: np.ndarray) -> np.ndarray:
    """Edges of a residue contact map (nonzero entries, made symmetric, self loops added), [2, E]."""
    m = (np.asarray(cmap) > 0) | (np.asarray(cmap).T > 0)
    np.fill_diagonal(m, True)
    src, dst = np.nonzero(m)
    return np.stack([src, dst]).astype(np.int64)


def ca_contact_map(structure: Path, chain: str | None, length: int, cutoff: float) -> np.ndarray:
    """C-alpha contact map (distance < cutoff) of one chain of a PDB/mmCIF file, checked against `length`."""
    import gemmi

    try:
        st = gemmi.read_structure(str(structure))
    except Exception as exc:
        raise DataError(structure, f"cannot read structure: {str(exc).splitlines()[0]}") from None
    model = st[0]
    chains = [c for c in model if chain is None or c.name == chain]
    if not chains:
        raise DataError(structure, f"chain {chain!r} not found")
    coords = []
    for res in chains[0]:
        ca = res.find_atom("CA", "*")
        if ca is not None and gemmi.find_tabulated_residue(res.name) is not None:
            if gemmi.find_tabulated_residue(res.name).is_amino_acid():
                coords.append([ca.pos.x, ca.pos.y, ca.pos.z])
    xyz = np.asarray(coords, dtype=np.float32).reshape(-1, 3)
    if len(xyz) != length:
        raise DataError(
            structure, f"chain {chains[0].name} has {len(xyz)} C-alpha residues, sequence has {length}"
        )
    d = np.sqrt(((xyz[:, None, :] - xyz[None, :, :]) ** 2).sum(-1))
    return (d < cutoff).astype(np.uint8)


def load_contact_map(path: Path, source: Path, where: str) -> np.ndarray:
    """A finite 2-D float32 map from a .npy file named at `where` (a line or complex) of `source`."""
    if not path.is_file():
        raise DataError(source, f"{where}: contact map {path} not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(path, f"cannot read .npy: {str(exc).splitlines()[0]}") from None
    if arr.ndim != 2:
        raise DataError(path, f"contact map must be 2-D, got shape {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(path, "contact map has NaN or infinite values")
    return arr
