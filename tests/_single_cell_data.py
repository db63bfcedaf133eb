"""Generated single-cell data shared by the single-cell tests (imported, not collected)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp


def make_cite(path: Path, n: int = 120, g: int = 40, p: int = 8, seed: int = 0) -> Path:
    """Three cell groups; RNA counts with a per-cell depth factor; protein counts tied to the group."""
    import mudata as md

    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, n)
    depth = rng.lognormal(0, 0.6, n)
    rates = rng.gamma(0.5, 2.0, size=(3, g))
    rna = rng.poisson(depth[:, None] * rates[group]).astype(np.float32)
    rna[:, 0] += 1
    prot = rng.poisson(5 + 40 * rng.random((3, p))[group]).astype(np.float32)
    obs = pd.DataFrame({"cell_type": [f"t{k}" for k in group]}, index=[f"c{i}" for i in range(n)])
    mods = {
        "rna": ad.AnnData(sp.csr_matrix(rna), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)])),
        "adt": ad.AnnData(
            sp.csr_matrix(prot), obs=obs.copy(), var=pd.DataFrame(index=[f"p{j}" for j in range(p)])
        ),
    }
    md.MuData(mods).write(path)
    return path


def make_adata(n: int = 60, g: int = 30, seed: int = 0) -> ad.AnnData:
    """Poisson-gamma counts (X and layer "counts") with cell_type, batch and donor in obs, chrom in var."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(1.0, 2.0, size=(n, g))).astype(np.float32)
    counts[:, 0] += 1  # no empty cells
    obs = pd.DataFrame(
        {
            "cell_type": rng.choice(["T", "B", "NK"], n),
            "batch": rng.choice(["b0", "b1"], n),
            "donor": np.array(["d0", "d1", "d2", "d3"])[np.arange(n) % 4],
        },
        index=[f"cell{i}" for i in range(n)],
    )
    var = pd.DataFrame({"chrom": rng.choice(["chr1", "chr2"], g)}, index=[f"gene{j}" for j in range(g)])
    a = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    a.layers["counts"] = sp.csr_matrix(counts)
    return a


def write_h5ad(tmp_path: Path, a: ad.AnnData, name: str = "cells.h5ad") -> Path:
    """`a` written to tmp_path / name."""
    path = tmp_path / name
    a.write_h5ad(path)
    return path


def write_mudata(tmp_path: Path, n_adt: int) -> Path:
    """cite.h5mu: 40 RNA cells beside the first `n_adt` of 40 ADT cells (under 40: the cells disagree)."""
    import mudata as md

    rna = make_adata(n=40)
    adt = make_adata(n=40, g=6, seed=1)[:n_adt].copy()
    path = tmp_path / "cite.h5mu"
    md.MuData({"rna": rna, "adt": adt}).write(path)
    return path


def one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
