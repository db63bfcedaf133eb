"""A tiny experiment for platform tests: a 12-node hypergraph and an experiment file that trains on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import yaml

MLP = {"name": "node_mlp", "hidden": 8}


def write_tiny_hypergraph(folder: Path) -> Path:
    """12 nodes, 2 classes, 4 hyperedges, one split: the smallest input the hypergraph data module reads."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    edges = {"hyperedges": [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]}
    (folder / "hyperedges.json").write_text(json.dumps(edges))
    sp.save_npz(folder / "features.npz", sp.csr_matrix(rng.random((12, 3)).astype(np.float32)))
    np.save(folder / "labels.npy", np.array([0, 1] * 6, dtype=np.int64))
    (folder / "splits.json").write_text(json.dumps([{"train": [0, 1, 2, 3], "test": list(range(4, 12))}]))
    return folder


def tiny_config(workdir: Path, model: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """An experiment (one epoch of `model`, default a small MLP) on the tiny hypergraph under `workdir`."""
    return {
        "name": "tiny",
        "model": model or MLP,
        "data": {"name": "hypergraph", "path": str(write_tiny_hypergraph(workdir / "graph"))},
        "trainer": {"max_epochs": 1},
        **extra,
    }


def write_experiment(workdir: Path, model: dict[str, Any] | None = None, **extra: Any) -> Path:
    path = workdir / "experiment.yaml"
    path.write_text(yaml.safe_dump(tiny_config(workdir, model, **extra)))
    return path
