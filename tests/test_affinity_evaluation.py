"""Contact and binding-site metrics of the affinity models: per complex and averaged, never pooled.

Each interaction map sums to 1 within its complex, so the weights of a large complex are smaller than those of
a small one. Pooling every pair of every complex into one ranking mixes those scales: two complexes that are
each ranked perfectly score below 1. The CPAC reference scores each complex and averages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from plexlab import api
from plexlab.modules.affinity.evaluation import contact_metrics

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def two_perfect_complexes() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A small complex (2 pairs) and a larger one (5 pairs), each map summing to 1, each ranked perfectly."""
    small = np.array([[0.6], [0.4]])
    small_t = np.array([[1], [0]], dtype=np.uint8)
    large = np.array([[0.3, 0.175, 0.175, 0.175, 0.175]])
    large_t = np.array([[1, 0, 0, 0, 0]], dtype=np.uint8)
    return [small, large], [small_t, large_t]


def test_two_perfectly_ranked_complexes_score_one() -> None:
    scores, targets = two_perfect_complexes()
    m = contact_metrics(scores, targets)
    # Pooled, the large complex's contact (0.3) ranks below the small one's non-contact (0.4): by hand, AP =
    # (1/1 + 2/3) / 2 = 0.833 and AUROC = 9/10 (0.3 beats 4 of the 5 negatives). Per complex both are 1.
    assert m["contact_auprc"] == pytest.approx(1.0)
    assert m["contact_auroc"] == pytest.approx(1.0)
    assert m["contact_random_auprc"] == pytest.approx((1 / 2 + 1 / 5) / 2)
    assert m["contact_complexes"] == 2 and m["contact_skipped"] == 0


def test_binding_sites_are_scored_per_complex() -> None:
    # Complex 1: residues scored [0.5, 0.3, 0.2] (max over atoms), site at residue 0: perfect.
    # Complex 2: residues scored [0.1, 0.6, 0.3], sites at residues 0 and 2: precision 1/2 at 0.3's rank 2,
    # then 2/3 at 0.1's rank 3: AP = (1/2 + 2/3) / 2 = 7/12. Mean: (1 + 7/12) / 2.
    s1 = np.array([[0.5, 0.0], [0.3, 0.0], [0.1, 0.2]])
    t1 = np.array([[1, 0], [0, 0], [0, 0]], dtype=np.uint8)
    s2 = np.array([[0.1], [0.6], [0.3]])
    t2 = np.array([[1], [0], [1]], dtype=np.uint8)
    m = contact_metrics([s1, s2], [t1, t2])
    assert m["site_auprc"] == pytest.approx((1 + 7 / 12) / 2)
    assert m["site_complexes"] == 2 and m["site_skipped"] == 0


def test_complexes_without_positive_or_negative_are_skipped_and_counted() -> None:
    scores, targets = two_perfect_complexes()
    no_contact = (np.full((2, 2), 0.25), np.zeros((2, 2), dtype=np.uint8))
    all_contact = (np.full((1, 3), 1 / 3), np.ones((1, 3), dtype=np.uint8))
    m = contact_metrics([*scores, no_contact[0], all_contact[0]], [*targets, no_contact[1], all_contact[1]])
    assert m["contact_auprc"] == pytest.approx(1.0) and m["contact_auroc"] == pytest.approx(1.0)
    assert m["contact_complexes"] == 2 and m["contact_skipped"] == 2
    # binding sites: the all-contact complex has only site residues, the no-contact one none; the small
    # complex has 1 site of 2 residues; the large complex is one residue, a site: nothing to rank
    assert m["site_complexes"] == 1 and m["site_skipped"] == 3


def test_no_scorable_complex_gives_counts_only() -> None:
    m = contact_metrics([np.full((2, 2), 0.25)], [np.zeros((2, 2), dtype=np.uint8)])
    assert m == {"contact_complexes": 0.0, "contact_skipped": 1.0, "site_complexes": 0.0, "site_skipped": 1.0}


def test_contacts_experiment_logs_per_complex_metrics_through_fit(workdir: Path, shared_data: Path) -> None:
    """sweeps/cpac_pdbbind_contacts.yaml through the runner, 2 epochs: the metrics are per complex."""
    complexes = shared_data / "affinity" / "pdbbind_contacts" / "complexes.json"
    n = len(json.loads(complexes.read_text()))
    res = api.fit(
        ROOT / "sweeps" / "cpac_pdbbind_contacts.yaml",
        {
            "data.path": str(complexes),
            "trainer.max_epochs": 2,
            "trainer.check_val_every_n_epoch": 1,
            "trainer.accelerator": "cpu",
        },
    )
    run = MlflowClient(res.tracking_uri).get_run(res.run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["test/contact_complexes"] + metrics["test/contact_skipped"] == n
    assert metrics["test/contact_complexes"] >= n - 1
    for key in ("contact_auprc", "contact_auroc", "site_auprc"):
        assert 0.0 <= metrics[f"test/{key}"] <= 1.0 and f"val/{key}" in metrics
