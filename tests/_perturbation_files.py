"""Perturbation screens written as .h5ad for the perturbation tests (imported, not collected)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata
import pandas as pd


def write_perturbation(
    tmp_path: Path,
    x: Any,
    labels: list[str] | None = None,
    layers: dict[str, Any] | None = None,
    name: str = "d.h5ad",
    key: str = "guide",
) -> Path:
    """Cells `x` (dense or sparse) labelled in obs[`key`], by default NT, A, B, C in turn; optional layers."""
    n = x.shape[0]
    labels = labels if labels is not None else ["NT", "A", "B", "C"] * (n // 4)
    ad = anndata.AnnData(X=x, obs=pd.DataFrame({key: labels}, index=[f"c{i}" for i in range(n)]))
    ad.var_names = [f"g{j}" for j in range(x.shape[1])]
    for k, v in (layers or {}).items():
        ad.layers[k] = v
    path = tmp_path / name
    ad.write_h5ad(path)
    return path
