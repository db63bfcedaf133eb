"""Evaluation shared by the affinity models (CPAC and the AffinityMLP baseline).

Predictions are accumulated per subset over an epoch and scored at its end: RMSE, Pearson and Spearman for
affinities; for samples with compound-protein contact maps, contact AUPRC/AUROC over the valid residue x atom
pairs of each complex and binding-site AUPRC over its residues (a residue's score is its largest interaction
weight; it is a binding site when it touches any atom), averaged over complexes as the CPAC reference does.
Scores are never pooled across complexes: each interaction map sums to 1 within its complex, so a large
complex's weights are smaller than a small one's and a pooled ranking mixes those scales. A complex without a
positive or without a negative has no AUPRC/AUROC; it is left out and counted (`contact_skipped`,
`site_skipped`), next to the number scored (`contact_complexes`, `site_complexes`).

Metric names: `val/<metric>`; `test/<metric>` for the main test set, `test/<set>_<metric>` for the extra
test sets (e.g. `test/kinase_pearson`), and `test/unseen_protein_<metric>` / `test/unseen_compound_<metric>`
for the main
test pairs whose protein or compound is absent from the training split.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch


def pearson(pred: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation (nan when either side is constant or fewer than 2 points)."""
    if len(y) < 2 or np.std(pred) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(pred, y)[0, 1])


def spearman(pred: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import rankdata

    return pearson(rankdata(pred), rankdata(y))


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """RMSE, Pearson and Spearman of predictions against targets."""
    return {
        "rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
        "pearson": pearson(pred, y),
        "spearman": spearman(pred, y),
    }


def contact_metrics(scores: list[np.ndarray], targets: list[np.ndarray]) -> dict[str, float]:
    """Contact AUPRC/AUROC and binding-site AUPRC per complex, averaged; each map is [residues, atoms].

    `contact_random_auprc` is the mean contact rate of the scored complexes (a random scorer's AUPRC).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    contact_ap, contact_roc, contact_rate, site_ap = [], [], [], []
    for s, t in zip(scores, targets, strict=True):
        hit = t.ravel() > 0
        if 0 < hit.sum() < hit.size:
            contact_ap.append(average_precision_score(hit, s.ravel()))
            contact_roc.append(roc_auc_score(hit, s.ravel()))
            contact_rate.append(hit.mean())
        site = t.max(axis=1) > 0
        if 0 < site.sum() < site.size:
            site_ap.append(average_precision_score(site, s.max(axis=1)))
    out: dict[str, float] = {
        "contact_complexes": float(len(contact_ap)),
        "contact_skipped": float(len(scores) - len(contact_ap)),
        "site_complexes": float(len(site_ap)),
        "site_skipped": float(len(scores) - len(site_ap)),
    }
    if contact_ap:
        out["contact_auprc"] = float(np.mean(contact_ap))
        out["contact_auroc"] = float(np.mean(contact_roc))
        out["contact_random_auprc"] = float(np.mean(contact_rate))
    if site_ap:
        out["site_auprc"] = float(np.mean(site_ap))
    return out


class AffinityEvalMixin:
    """Accumulates predictions per subset and logs the metrics at epoch end (mixed into a LightningModule,
    before it in the bases so these epoch hooks take effect). The model's validation/test steps call
    `_eval_collect`; the hooks below reset at each epoch's start and log at its end."""

    def _eval_reset(self) -> None:
        self._eval: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))

    def _eval_collect(self, batch: Any, pred: torch.Tensor, imap: torch.Tensor | None = None) -> None:
        if not hasattr(self, "_eval"):
            self._eval_reset()
        acc = self._eval[batch.subset]
        acc["pred"].append(pred.detach().float().cpu().numpy())
        acc["y"].append(batch.affinity.detach().cpu().numpy())
        acc["unseen_protein"].append(batch.unseen_protein.cpu().numpy())
        acc["unseen_compound"].append(batch.unseen_compound.cpu().numpy())
        if imap is not None and bool(batch.has_contacts.any()):
            n_res = batch.protein_mask[batch.protein_of].sum(1).cpu().numpy()
            n_atoms = batch.atom_mask.sum(1).cpu().numpy()
            for b in torch.nonzero(batch.has_contacts).flatten().tolist():
                acc["scores"].append(imap[b, : n_res[b], : n_atoms[b]].detach().float().cpu().numpy())
                acc["targets"].append(batch.contacts[b, : n_res[b], : n_atoms[b]].cpu().numpy())

    def _eval_finish(self, stage: str) -> dict[str, float]:
        results: dict[str, float] = {}
        for subset, acc in getattr(self, "_eval", {}).items():
            pred, y = np.concatenate(acc["pred"]), np.concatenate(acc["y"])
            main = subset in ("val", "test", "train", "predict")
            prefix = f"{stage}/" if main else f"{stage}/{subset}_"
            metrics = regression_metrics(pred, y)
            if acc["scores"]:
                metrics.update(contact_metrics(acc["scores"], acc["targets"]))
            if stage == "test" and main:
                for flag in ("unseen_protein", "unseen_compound"):
                    m = np.concatenate(acc[flag])
                    if m.sum() >= 3:
                        for k, v in regression_metrics(pred[m], y[m]).items():
                            results[f"{stage}/{flag}_{k}"] = v
                        results[f"{stage}/{flag}_count"] = float(m.sum())
            for k, v in metrics.items():
                results[prefix + k] = v
        for k, v in results.items():
            # nan (constant predictions) is logged as 0 correlation: checkpointing on val/pearson still works
            self.log(k, 0.0 if math.isnan(v) and ("pearson" in k or "spearman" in k) else v)
        self._eval_reset()
        return results

    def on_validation_epoch_start(self) -> None:
        self._eval_reset()

    def on_test_epoch_start(self) -> None:
        self._eval_reset()

    def on_validation_epoch_end(self) -> None:
        self._eval_finish("val")

    def on_test_epoch_end(self) -> None:
        self._eval_finish("test")
