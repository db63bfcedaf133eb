"""How much does SAILERX's invariance term lower the depth the embedding carries? (real CITE-seq)

Reproduce the figures: `nice -n 10 .venv/bin/python tests/test_sailerx_invariance.py` (3 seeds x 2 models;
`--seeds 0 1 2 3 4`, `--epochs N` to change), or `.venv/bin/pytest tests/test_sailerx_invariance.py -m slow`.
Model and data are sweeps/sailerx_citeseq.yaml's; only `invariance_weight` differs (0 vs the file's 1), and
each seed trains both models from the same initial weights and batch order. Leakage of the encoded RNA's
(log) depth, the covariate the decoder is given, in the posterior means of all 500 cells: 5-fold
cross-validated R^2 of a linear regression and of a 15-nearest-neighbour regression (the embedding may carry
depth non-linearly), and the largest |Pearson r| of one latent dimension. Clusters: Leiden (resolution 0.5)
of the embedding against Leiden clusters of the protein alone (the file has no cell-type labels), ARI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "single_cell" / "citeseq_citefuse_500cells.h5mu"
CONFIG = ROOT / "sweeps" / "sailerx_citeseq.yaml"
METRICS = ("library_r2", "library_knn_r2", "library_corr", "library_r2_sampled", "active_dims", "ari")


def knn_r2(embedding: np.ndarray, y: np.ndarray, k: int = 15, folds: int = 5, seed: int = 0) -> float:
    """Out-of-fold R^2 of a k-nearest-neighbour regression of `y` on the embedding."""
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.neighbors import KNeighborsRegressor

    cv = KFold(folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(KNeighborsRegressor(k), embedding, y, cv=cv)
    return float(1.0 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def posterior(model, datamodule) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and standard deviations of all cells (file order)."""
    import torch

    model.eval()
    mus, sds = [], []
    with torch.no_grad():
        for batch in datamodule.predict_dataloader():
            mu, logvar = model.encode(model.target(batch))
            mus.append(mu.double().numpy())
            sds.append(torch.exp(0.5 * logvar).double().numpy())
    return np.concatenate(mus), np.concatenate(sds)


def compare(
    path: Path,
    seeds: tuple[int, ...] = (0, 1, 2),
    weights: tuple[float, ...] | None = None,
    epochs: int | None = None,
) -> list[dict]:
    """Train the file's model once per (seed, invariance weight); one row of metrics per run."""
    import lightning.pytorch as pl
    import torch
    from _trainer import quiet_trainer
    from plexlab.datamodules.single_cell.datamodule import SingleCellDataModule
    from plexlab.modules.single_cell.evaluation import (
        cluster_metrics,
        embed_cells,
        leiden_clusters,
        library_leakage,
    )
    from plexlab.modules.single_cell.sailerx import SAILERX

    # one thread: on a few shared cores, torch's waiting threads made each step about 10x slower
    torch.set_num_threads(1)
    cfg = yaml.safe_load(CONFIG.read_text())
    data = {k: v for k, v in cfg["data"].items() if k != "name"} | {"path": str(path)}
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
    weights = weights or (0.0, float(model_cfg["invariance_weight"]))
    epochs = epochs or int(cfg["trainer"]["max_epochs"])
    dm = SingleCellDataModule(**data)
    dm.setup("fit")
    # the technical covariate the decoder is given: the encoded modality's own depth (log total counts)
    loglib = dm.log_depth[model_cfg["encoded_modality"]].astype(np.float64)
    ref = SingleCellDataModule(
        str(path), modalities=["ADT"], transforms={"ADT": "clr"}, pca_components={"ADT": 20}
    )
    ref.setup("fit")
    protein_clusters = leiden_clusters(ref.pca["ADT"], resolution=0.5)
    rows = []
    for seed in seeds:
        for lam in weights:
            pl.seed_everything(seed)
            model = SAILERX(**dm.model_kwargs(), **(model_cfg | {"invariance_weight": lam}))
            trainer = quiet_trainer(max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0)
            trainer.fit(model, dm)
            emb = embed_cells(model, dm)
            row = {"seed": seed, "invariance_weight": lam, **library_leakage(emb, loglib)}
            row["library_knn_r2"] = knn_r2(emb, loglib)
            # what the invariance term bounds is I(z; c) of the stochastic code z ~ q(z|x), not of its mean:
            # a mean that varies far less than its posterior sd carries little information but scores fully
            # in a regression on the means; so also: R^2 from one sample of z per cell (mean of 10 draws)
            mu, sd = posterior(model, dm)
            rng = np.random.default_rng(seed)
            draws = [library_leakage(mu + sd * rng.standard_normal(mu.shape), loglib) for _ in range(10)]
            row["library_r2_sampled"] = float(np.mean([d["library_r2"] for d in draws]))
            row["active_dims"] = float(((mu.std(0) / np.sqrt((sd**2).mean(0))) > 0.1).sum())
            row["ari"] = cluster_metrics(emb, protein_clusters, resolution=0.5)["ari"]
            logging.getLogger(__name__).info("%s", row)
            rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict[float, dict[str, tuple[float, float]]]:
    """Mean and standard deviation (over seeds) of each metric, per invariance weight."""
    out: dict[float, dict[str, tuple[float, float]]] = {}
    for lam in sorted({r["invariance_weight"] for r in rows}):
        runs = [r for r in rows if r["invariance_weight"] == lam]
        out[lam] = {
            m: (float(np.mean([r[m] for r in runs])), float(np.std([r[m] for r in runs]))) for m in METRICS
        }
    return out


@pytest.mark.slow
def test_invariance_term_at_the_reference_scale(shared_data: Path) -> None:
    """At the reference's scale (the pairwise KL once per batch, 1/200 per cell) the term barely moves the
    leakage on this file (seed 0: linear R^2 0.527 -> 0.527, sampled 0.083 -> 0.083, ARI 0.762 -> 0.769);
    the earlier "lower on every seed" came from the 200-times stronger `invariance_scale: per_cell`. The
    test guards that the term does not cost clusters nor add leakage."""
    rows = compare(shared_data / "single_cell" / "citeseq_citefuse_500cells.h5mu", seeds=(0,))
    res = summary(rows)
    logging.getLogger(__name__).warning("leakage without / with invariance: %s", res)
    for metric in ("library_r2", "library_r2_sampled"):
        assert res[1.0][metric][0] < res[0.0][metric][0] + 0.02
    assert res[1.0]["ari"][0] > res[0.0]["ari"][0] - 0.05


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights", type=float, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    rows = compare(args.path, tuple(args.seeds), tuple(args.weights) if args.weights else None, args.epochs)
    for r in rows:
        sys.stdout.write(
            "\t".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
        )
        sys.stdout.write("\n")
    for lam, stats in summary(rows).items():
        cells = "\t".join(f"{m}={mean:.3f}±{std:.3f}" for m, (mean, std) in stats.items())
        sys.stdout.write(f"invariance_weight={lam:g}\t{cells}\t(n={len(args.seeds)} seeds)\n")
