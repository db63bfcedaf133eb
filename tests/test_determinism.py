"""Reproducibility on CPU through the public API: the same seed and config give identical metrics, every
epoch; another seed gives different ones.

Two models: HyperGCL (full-batch, random graph views every step) and sVAE+ (mini-batches with shuffling,
dropout, reparameterised sampling and Gumbel masks) on tiny generated data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _hypergraph_files import write_graph
from mlflow.tracking import MlflowClient
from plexlab import api, schema

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hypergcl(workdir: Path) -> dict[str, Any]:
    folder = workdir / "graph"
    if not folder.exists():
        write_graph(folder)
    return {
        "name": "determinism-hypergcl",
        "seed": 0,
        "model": {"name": "hypergcl", "hidden": 8, "dropout": 0.2, "aug": "edge"},
        "data": {"name": "hypergraph", "path": str(folder)},
        "trainer": {"max_epochs": 6, "accelerator": "cpu"},
    }


def svae(workdir: Path) -> dict[str, Any]:
    return {
        "name": "determinism-svae",
        "seed": 0,
        "model": {
            "name": "svae",
            "n_latent": 3,
            "n_hidden": 16,
            "n_layers": 1,
            "dropout": 0.1,
            "n_importance_samples": 2,
            "transfer_retrain_epochs": 1,
            "transfer_fit_steps": 5,
        },
        "data": {
            "name": "perturbation",
            "simulate": True,
            "batch_size": 16,
            "sim_n_perturbations": 4,
            "sim_n_cells_per_perturbation": 16,
            "sim_n_control_cells": 16,
            "sim_n_latents": 3,
            "sim_n_genes": 40,
        },
        "trainer": {"max_epochs": 3, "accelerator": "cpu"},
    }


def curves(result: api.FitResult) -> dict[str, list[tuple[int, float]]]:
    """Every metric the run logged, each with its full history (step, value); not the machine's own
    (`system/*`: CPU, memory), which no seed fixes."""
    client = MlflowClient(result.tracking_uri)
    logged = client.get_run(result.run_id).data.metrics
    keys = sorted(k for k in logged if not k.startswith(schema.SYSTEM_METRICS_PREFIX))
    return {k: [(m.step, m.value) for m in client.get_metric_history(result.run_id, k)] for k in keys}


@pytest.mark.parametrize("make", [hypergcl, svae], ids=["hypergcl", "svae"])
def test_same_seed_same_metrics_other_seed_other_metrics(make, workdir: Path) -> None:
    config = make(workdir)
    first = api.fit(config)
    second = api.fit(config)
    assert first.run_id != second.run_id
    assert first.metrics and first.metrics == second.metrics  # exact, not approximately
    history = curves(first)
    assert any(k.startswith("train/") and len(v) > 1 for k, v in history.items())
    assert history == curves(second)

    other = api.fit(config, seed=1)
    assert other.config.seed == 1
    other_history = curves(other)
    train_keys = [k for k in history if k.startswith("train/")]
    assert any(history[k] != other_history[k] for k in train_keys), "the seed changed nothing"
