"""Generated single-cell data shared by the SAILERX and UnitedNet tests (imported, not collected)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
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
