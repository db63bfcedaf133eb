"""Evaluation shared by the single-cell models: Leiden clusters, ARI/NMI/silhouette, library-size leakage,
UMAP.

Scanpy, leidenalg and matplotlib are imported inside the functions so importing a model stays cheap.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _adata(embedding: np.ndarray, n_neighbors: int, seed: int):
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(X=np.asarray(embedding, dtype=np.float32))
    k = max(2, min(n_neighbors, adata.n_obs - 1))
    sc.pp.neighbors(adata, n_neighbors=k, use_rep="X", random_state=seed)
    return adata


def leiden_clusters(
    embedding: np.ndarray, resolution: float = 1.0, n_neighbors: int = 15, seed: int = 0
) -> np.ndarray:
    """Leiden clusters (integer codes) of a cells x dims embedding on its kNN graph (scanpy defaults)."""
    import scanpy as sc

    adata = _adata(embedding, n_neighbors, seed)
    sc.tl.leiden(
        adata, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, directed=False
    )
    return adata.obs["leiden"].astype(int).to_numpy()


def cluster_metrics(
    embedding: np.ndarray,
    labels: np.ndarray,
    clusters: np.ndarray | None = None,
    resolution: float = 1.0,
    seed: int = 0,
    nmi_average: str = "arithmetic",
) -> dict[str, float]:
    """ARI and NMI of Leiden clusters against `labels`, and the silhouette of the labels in the embedding.

    Cells with a negative label (unknown) are left out. `nmi_average` is scikit-learn's `average_method`
    (`arithmetic`, its default; `geometric`, UnitedNet's). The silhouette is the euclidean one of
    scikit-learn, rescaled to [0, 1] as in scIB ((s + 1) / 2).
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    embedding = np.asarray(embedding, dtype=np.float64)
    labels = np.asarray(labels)
    if clusters is None:
        clusters = leiden_clusters(embedding, resolution=resolution, seed=seed)
    keep = labels >= 0
    out = {"n_clusters": float(len(np.unique(clusters)))}
    if keep.sum() < 3 or len(np.unique(labels[keep])) < 2:
        return out
    out["ari"] = float(adjusted_rand_score(labels[keep], clusters[keep]))
    out["nmi"] = float(normalized_mutual_info_score(labels[keep], clusters[keep], average_method=nmi_average))
    out["silhouette"] = float((silhouette_score(embedding[keep], labels[keep]) + 1) / 2)
    return out


def library_leakage(
    embedding: np.ndarray, library: np.ndarray, folds: int = 5, seed: int = 0
) -> dict[str, float]:
    """How much of the (log) library size the embedding still carries.

    `library_r2`: cross-validated R^2 of a linear regression of the library size on the embedding (out of
    fold, so a 50-dim embedding of a few hundred cells does not score by overfitting); `library_corr`: the
    largest absolute Pearson correlation between one embedding dimension and the library size.
    """
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import KFold, cross_val_predict

    z = np.asarray(embedding, dtype=np.float64)
    y = np.asarray(library, dtype=np.float64)
    pred = cross_val_predict(LinearRegression(), z, y, cv=KFold(folds, shuffle=True, random_state=seed))
    r2 = 1.0 - ((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
    zc, yc = z - z.mean(0), y - y.mean()
    denom = np.sqrt((zc**2).sum(0) * (yc**2).sum())
    corr = np.divide(zc.T @ yc, denom, out=np.zeros(z.shape[1]), where=denom > 1e-12)
    return {"library_r2": float(r2), "library_corr": float(np.abs(corr).max())}


def umap_png(
    embedding: np.ndarray,
    colors: dict[str, np.ndarray],
    path: str | Path,
    title: str = "",
    n_neighbors: int = 15,
    seed: int = 0,
) -> Path:
    """UMAP of the embedding, one panel per colouring (categorical ints or continuous floats), saved as
    PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    adata = _adata(embedding, n_neighbors, seed)
    sc.tl.umap(adata, random_state=seed)
    xy = adata.obsm["X_umap"]
    n = max(1, len(colors))
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], colors.items() or [("cells", np.zeros(len(xy)))], strict=False):
        values = np.asarray(values)
        categorical = np.issubdtype(values.dtype, np.integer) or values.dtype.kind in "OUSb"
        if categorical:
            cats, codes = np.unique(values.astype(str), return_inverse=True)
            sc_ = ax.scatter(xy[:, 0], xy[:, 1], c=codes, cmap="tab20", s=6, linewidths=0)
            if len(cats) <= 20:
                handles = [
                    plt.Line2D([], [], marker="o", ls="", color=sc_.cmap(sc_.norm(i)), label=c)
                    for i, c in enumerate(cats)
                ]
                ax.legend(handles=handles, fontsize=6, loc="best", markerscale=0.8, frameon=False)
        else:
            sc_ = ax.scatter(xy[:, 0], xy[:, 1], c=values, cmap="viridis", s=6, linewidths=0)
            fig.colorbar(sc_, ax=ax, shrink=0.7)
        ax.set_title(f"{title} {name}".strip(), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_metrics_tsv(metrics: dict[str, float], path: str | Path) -> Path:
    """A two-column TSV (metric, value)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["metric\tvalue"] + [f"{k}\t{v:.6g}" for k, v in metrics.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def embed_cells(model, datamodule) -> np.ndarray:
    """`model.embed` over `datamodule.predict_dataloader()` (all cells, file order), as a numpy array."""
    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for batch in datamodule.predict_dataloader():
            out.append(model.embed(move_data_to_device(batch, model.device)).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def evaluate_cells(
    model,
    datamodule,
    out_dir: Path,
    name: str,
    resolution: float = 1.0,
    depth: np.ndarray | None = None,
    nmi_average: str = "arithmetic",
) -> dict[str, float]:
    """Embed all cells; write Leiden clusters, metrics (vs labels and depth) and a UMAP to `out_dir`.

    `depth`: the per-cell log depth whose leakage into the embedding is measured (default: the log library
    size of the data module); `nmi_average` as in `cluster_metrics`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    emb = embed_cells(model, datamodule)
    clusters = leiden_clusters(emb, resolution=resolution)
    log_depth = np.log(datamodule.library_size) if depth is None else np.asarray(depth)
    metrics = {"n_clusters": float(len(np.unique(clusters)))}
    metrics.update(library_leakage(emb, log_depth))
    labels = np.asarray(datamodule.labels)
    colors: dict[str, np.ndarray] = {"leiden": clusters}
    if (labels >= 0).any():
        metrics.update(cluster_metrics(emb, labels, clusters=clusters, nmi_average=nmi_average))
        names = np.asarray(datamodule.label_names, dtype=object)
        colors["cell type"] = np.where(labels >= 0, names[np.maximum(labels, 0)], "unknown")
    colors["log depth"] = log_depth.astype(np.float64)
    write_metrics_tsv(metrics, out_dir / f"{name}_metrics.tsv")
    ids = datamodule.sample_ids()
    (out_dir / f"{name}_leiden.tsv").write_text(
        "cell\tleiden\n" + "".join(f"{c}\t{k}\n" for c, k in zip(ids, clusters, strict=True))
    )
    umap_png(emb, colors, out_dir / f"{name}_umap.png", title=name)
    log.info("%s: %s", name, metrics)
    return metrics
