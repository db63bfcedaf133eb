"""Sparse mechanism shift simulator (the sVAE+ simulation benchmark).

Each perturbation is a stochastic intervention on a few latent variables: cells of perturbation ``a`` have
``z ~ N(mu_a, I)`` where ``mu_a`` is non-zero on 1-3 latents (its *targets*), each shifted by
``sign * N(shift_mean, shift_std)``. Control cells have ``z ~ N(0, I)``. Gene expression comes from a fixed
random leaky-ReLU MLP (orthogonal weights, as in Lachapelle et al.) whose logits go through a softmax over
genes; counts are Poisson draws around ``library * softmax``.

Two deliberate departures from the reference simulator of Lopez et al.:
- targets are drawn WITHOUT replacement, so a perturbation that says it has 3 targets really has 3 distinct
ones
  (the reference could draw the same latent twice and silently get fewer targets);
- the softmax normalizes over genes for each cell (a per-cell expression profile), not over cells.

The result is a plain AnnData: ``X`` holds the counts (float32, integer valued), ``obs[obs_key]`` the
perturbation label (``control_label`` for controls), ``obsm["z_true"]`` the ground-truth latents, and ``.uns``
plain arrays:
``target_graph`` (perturbations x latents, 0/1), ``shift_means`` (the ``mu_a``), ``perturbation_names`` (row
order of both) and ``control_label``.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import anndata
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

CONTROL_LABEL = "control"
OBS_KEY = "perturbation"


def _orthogonal(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """An n_in x n_out matrix with orthonormal rows or columns (whichever is fewer), so the map is
    injective."""
    w = rng.normal(size=(max(n_in, n_out), min(n_in, n_out)))
    q, _ = np.linalg.qr(w)
    return q if n_in >= n_out else q.T


def _mlp_params(
    rng: np.random.Generator, n_latents: int, n_genes: int, n_hidden: int, neg_slope: float
) -> list[np.ndarray]:
    # He-style gain for leaky ReLU, orthogonal weights: the composed map is injective almost surely when
    # n_latents <= n_hidden <= n_genes, so the latents are recoverable in principle.
    gain = np.sqrt(2.0 / (1.0 + neg_slope**2))
    dims = [n_latents, n_hidden, n_hidden, n_hidden, n_genes]
    return [_orthogonal(rng, a, b) * gain * np.sqrt(2.0 / (a + b)) for a, b in itertools.pairwise(dims)]


def _gene_probabilities(z: np.ndarray, weights: list[np.ndarray], neg_slope: float) -> np.ndarray:
    h = z
    for w in weights[:-1]:
        h = h @ w
        h = np.maximum(neg_slope * h, h)
    logits = h @ weights[-1]
    logits = logits / logits.std()
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)  # softmax over genes, per cell


def simulate_sparse_shift(
    n_perturbations: int = 100,
    n_cells_per_perturbation: int = 250,
    n_control_cells: int = 250,
    n_latents: int = 15,
    n_genes: int = 100,
    n_hidden: int = 40,
    min_targets: int = 1,
    max_targets: int = 3,
    shift_mean: float = 5.0,
    shift_std: float = 0.5,
    library_size: float = 2000.0,
    library_log_std: float = 0.25,
    neg_slope: float = 0.2,
    seed: int = 0,
) -> anndata.AnnData:
    """Simulate sparse mechanism shift perturbation data and return it as an AnnData (see the module
    docstring).

    ``library_size`` is the median total count per cell; each cell's library is log-normal around it with
    ``library_log_std``. The defaults are the sVAE+ benchmark: 100 perturbations x 250 cells, 15 latents, 100
    genes, 1-3 targets per perturbation shifted by sign * N(5, 0.5), plus 250 control cells.
    """
    if not 1 <= min_targets <= max_targets <= n_latents:
        raise ValueError(
            f"need 1 <= min_targets <= max_targets <= n_latents, got {min_targets}, {max_targets}"
        )
    if not n_latents <= n_hidden <= n_genes:
        raise ValueError(f"need n_latents <= n_hidden <= n_genes, got {n_latents}, {n_hidden}, {n_genes}")
    rng = np.random.default_rng(seed)

    targets = np.zeros((n_perturbations, n_latents), dtype=np.int8)
    for a in range(n_perturbations):
        k = rng.integers(min_targets, max_targets + 1)
        targets[a, rng.choice(n_latents, size=k, replace=False)] = 1
    sign = np.where(rng.random(targets.shape) < 0.5, -1.0, 1.0)
    shift_means = targets * sign * rng.normal(shift_mean, shift_std, size=targets.shape)

    names = [f"P{a:03d}" for a in range(n_perturbations)]
    labels = [CONTROL_LABEL] * n_control_cells + [n for n in names for _ in range(n_cells_per_perturbation)]
    means = np.concatenate(
        [np.zeros((n_control_cells, n_latents)), np.repeat(shift_means, n_cells_per_perturbation, axis=0)]
    )
    z = means + rng.normal(size=means.shape)

    weights = _mlp_params(rng, n_latents, n_genes, n_hidden, neg_slope)
    probs = _gene_probabilities(z, weights, neg_slope)
    library = library_size * np.exp(library_log_std * rng.normal(size=(len(z), 1)))
    counts = rng.poisson(library * probs).astype(np.float32)

    order = rng.permutation(
        len(z)
    )  # shuffle cells so no split can accidentally follow the perturbation order
    obs = pd.DataFrame(
        {OBS_KEY: pd.Categorical(np.asarray(labels)[order], categories=[CONTROL_LABEL, *names])},
        index=[f"cell{i}" for i in range(len(z))],
    )
    adata = anndata.AnnData(
        X=counts[order], obs=obs, var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)])
    )
    adata.obsm["z_true"] = z[order].astype(np.float32)
    adata.uns["target_graph"] = targets
    adata.uns["shift_means"] = shift_means.astype(np.float32)
    adata.uns["perturbation_names"] = np.asarray(names)
    adata.uns["control_label"] = CONTROL_LABEL
    logger.info(
        "simulated %d cells x %d genes, %d perturbations, mean library %.0f",
        adata.n_obs,
        n_genes,
        n_perturbations,
        float(counts.sum(1).mean()),
    )
    return adata


def write_sparse_shift(path: str | os.PathLike[str], **kwargs: object) -> Path:
    """Simulate with ``simulate_sparse_shift(**kwargs)`` and write an .h5ad atomically; returns the path."""
    path = Path(path)
    adata = simulate_sparse_shift(**kwargs)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.h5ad")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
