"""Contact metrics of one CPAC checkpoint under both protocols: per complex (plexlab's) and pooled (the old).

The same test-set interaction maps are scored twice, so the difference is the protocol alone. Run from the
repository root after `plexlab fit sweeps/cpac_pdbbind_contacts.yaml`, with the best checkpoint it logged
(and `key=value` overrides if any):

    .venv/bin/python tests/bench/cpac_contact_protocols.py sweeps/cpac_pdbbind_contacts.yaml BEST.ckpt
"""

from __future__ import annotations

import sys

import numpy as np
from plexlab import train
from plexlab.modules.affinity import evaluation
from sklearn.metrics import average_precision_score, roc_auc_score


def pooled(scores: list[np.ndarray], targets: list[np.ndarray]) -> dict[str, float]:
    """The old protocol: every residue x atom pair of every complex in one ranking."""
    s = np.concatenate([m.ravel() for m in scores])
    t = np.concatenate([m.ravel() for m in targets]) > 0
    site_s = np.concatenate([m.max(axis=1) for m in scores])
    site_t = np.concatenate([m.max(axis=1) for m in targets]) > 0
    return {
        "contact_auprc": float(average_precision_score(t, s)),
        "contact_auroc": float(roc_auc_score(t, s)),
        "site_auprc": float(average_precision_score(site_t, site_s)),
    }


def main(config: str, ckpt: str, overrides: list[str]) -> None:
    seen: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
    per_complex = evaluation.contact_metrics

    def spy(scores: list[np.ndarray], targets: list[np.ndarray]) -> dict[str, float]:
        seen.append((scores, targets))
        return per_complex(scores, targets)

    evaluation.contact_metrics = spy
    train.test(config, ckpt, overrides, track=False)
    scores, targets = seen[-1]
    new, old = per_complex(scores, targets), pooled(scores, targets)
    print(f"{len(scores)} complexes ({new['contact_skipped']:.0f} skipped per complex)")
    for key in ("contact_auprc", "contact_auroc", "site_auprc"):
        print(f"{key}: per complex {new[key]:.3f}, pooled {old[key]:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
