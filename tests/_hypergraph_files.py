"""Hypergraph folders written for the HyperGCL, runner and sweep tests (imported, not collected)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def write_graph(
    folder: Path,
    n: int = 60,
    classes: int = 3,
    edges: list[list[int]] | None = None,
    labels: np.ndarray | None = None,
    splits: list[dict] | None = None,
) -> Path:
    """features.npz (one-hot class plus noise), labels.npy, hyperedges.json and splits.json in `folder`.

    By default the hyperedges join same-class nodes (four per class) and every fifth node is for training.
    """
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes if labels is None else labels
    x = np.eye(classes)[y] + rng.normal(0, 1.0, (n, classes))
    edges = edges or [
        [int(i) for i in np.flatnonzero(y == c)[k::4]] for c in range(classes) for k in range(4)
    ]
    folder.mkdir(exist_ok=True)
    sp.save_npz(folder / "features.npz", sp.csr_matrix(x.astype(np.float32)))
    np.save(folder / "labels.npy", np.asarray(y, dtype=np.int64))
    (folder / "hyperedges.json").write_text(json.dumps({"hyperedges": edges}))
    train = [i for i in range(n) if i % 5 == 0]
    splits = splits or [{"train": train, "test": [i for i in range(n) if i % 5]}]
    (folder / "splits.json").write_text(json.dumps(splits))
    return folder
