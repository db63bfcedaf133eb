"""Hypergraph node classification: the HyperGCN / AllSet benchmark format, read and validated.

A data set folder holds `hyperedges.json` ({"hyperedges": [[node ids], ...]}), `features.npz` (scipy CSR),
`labels.npy` (int64, one per node) and `splits.json` (a list of {"train": [...], "test": [...]} and optionally
"val"). The whole graph is one batch (full-batch training, as in the papers).

Two split protocols, chosen by `protocol`; `split` is the run index in both:
- "hypergcn": split `split` of splits.json (HyperGCN's fixed splits, 140 training nodes on Cora); validation
  nodes are drawn from its test nodes (`val_fraction`, default 0.2 of them). Few labels: the harder protocol.
- "random": the HyperGCL/AllSet protocol, a random permutation of all nodes seeded by (`seed`, `split`):
  `train_fraction` (default 0.1) train, `val_fraction` (default 0.1) validation, the rest (0.8) test.
  splits.json is not read; splits 0..19 are the paper's 20 runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import scipy.sparse as sp
import torch
from plexlab.datamodules.errors import DataError
from torch.utils.data import DataLoader


@dataclass
class Hypergraph:
    """A hypergraph as node features plus its vertex-hyperedge incidences (star expansion, COO pairs)."""

    x: torch.Tensor  # [num_nodes, num_features] float
    node_idx: torch.Tensor  # [num_incidences] long: incidence k joins node node_idx[k] ...
    edge_idx: torch.Tensor  # ... to hyperedge edge_idx[k]
    num_edges: int

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> Hypergraph:
        return replace(
            self, x=self.x.to(device), node_idx=self.node_idx.to(device), edge_idx=self.edge_idx.to(device)
        )


@dataclass
class NodeBatch:
    """The full graph with labels and the split masks: one batch per epoch."""

    graph: Hypergraph
    y: torch.Tensor
    train_mask: torch.Tensor
    val_mask: torch.Tensor
    test_mask: torch.Tensor


def read_hyperedges(path: Path, num_nodes: int) -> list[list[int]]:
    """Read and validate hyperedges.json: every node id in range, no empty hyperedge."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot read hyperedges: {exc}") from None
    edges = raw.get("hyperedges") if isinstance(raw, dict) else None
    if not isinstance(edges, list):
        raise DataError(path, 'expected {"hyperedges": [[node ids], ...]}')
    for i, edge in enumerate(edges):
        if not isinstance(edge, list) or not edge:
            raise DataError(path, f"hyperedge {i}: must be a non-empty list of node ids")
        for node in edge:
            if not isinstance(node, int) or isinstance(node, bool) or not 0 <= node < num_nodes:
                raise DataError(path, f"hyperedge {i}: node {node!r} is not an id in [0, {num_nodes})")
    return edges


def read_features(path: Path) -> np.ndarray:
    """Read features.npz (scipy sparse) or features.npy (dense) as a float32 array without NaN."""
    try:
        mat = sp.load_npz(path).toarray() if path.suffix == ".npz" else np.load(path, allow_pickle=False)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(path, f"cannot read features: {exc}") from None
    if mat.ndim != 2:
        raise DataError(path, f"features must be a 2-D matrix, got shape {mat.shape}")
    if not np.isfinite(mat).all():
        row = int(np.argwhere(~np.isfinite(mat))[0, 0])
        raise DataError(path, f"node {row}: features contain NaN or infinity")
    return mat.astype(np.float32)


def read_labels(path: Path, num_nodes: int) -> np.ndarray:
    """Read labels.npy: one non-negative integer per node."""
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read labels: {exc}") from None
    if labels.ndim != 1 or labels.shape[0] != num_nodes:
        raise DataError(path, f"expected {num_nodes} labels (one per node), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise DataError(path, "labels must be non-negative integers")
    return labels.astype(np.int64)


def read_split(path: Path, index: int, num_nodes: int) -> dict[str, np.ndarray]:
    """Read split `index` of splits.json and check that its parts are in range and disjoint."""
    try:
        splits = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot read splits: {exc}") from None
    if not isinstance(splits, list) or not splits:
        raise DataError(path, 'expected a list of {"train": [...], "test": [...]}')
    if not 0 <= index < len(splits):
        raise DataError(path, f"split {index} does not exist; the file has {len(splits)} splits")
    split = splits[index]
    if not isinstance(split, dict) or "train" not in split or "test" not in split:
        raise DataError(path, f"split {index}: needs 'train' and 'test' node lists")
    parts = {}
    for name, ids in split.items():
        arr = np.asarray(ids)
        in_range = arr.size == 0 or (
            np.issubdtype(arr.dtype, np.integer) and 0 <= arr.min() and arr.max() < num_nodes
        )
        if arr.ndim != 1 or not in_range:
            raise DataError(path, f"split {index}: {name} holds ids outside [0, {num_nodes})")
        if np.unique(arr).size != arr.size:
            raise DataError(path, f"split {index}: {name} lists a node twice")
        parts[name] = arr.astype(np.int64)
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = np.intersect1d(parts[a], parts[b])
            if common.size:
                raise DataError(path, f"split {index}: node {int(common[0])} is in both {a} and {b}")
    return parts


def random_split(
    n: int, train_fraction: float, val_fraction: float, seed: int, split: int
) -> dict[str, np.ndarray]:
    """A random train/val/test partition of `n` nodes (AllSet's `rand_train_test_idx`, not stratified).

    The permutation is drawn from (`seed`, `split`), so each split index is one reproducible run; the train
    and val sizes are rounded and every remaining node is a test node.
    """
    order = np.random.default_rng([seed, split]).permutation(n)
    n_train, n_val = round(train_fraction * n), round(val_fraction * n)
    return {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }


def incidences(edges: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Star expansion of hyperedges: (node_idx, edge_idx) pairs, duplicates within a hyperedge removed."""
    nodes, owners = [], []
    for e, edge in enumerate(edges):
        members = sorted(set(edge))
        nodes.extend(members)
        owners.extend([e] * len(members))
    return torch.tensor(nodes, dtype=torch.long), torch.tensor(owners, dtype=torch.long)


class HypergraphDataModule(pl.LightningDataModule):
    """Full-batch hypergraph node classification on a HyperGCN split or a random 10/10/80 split.

    Args:
        path: folder with hyperedges.json, features.npz (or .npy), labels.npy and splits.json.
        split: run index: the row of splits.json ("hypergcn") or the seed of the permutation ("random").
        protocol: "hypergcn" (fixed splits, validation from their test nodes) or "random" (10/10/80).
        val_fraction: "hypergcn": share of the split's test nodes moved to validation (default 0.2);
            "random": share of all nodes (default 0.1). A split that lists "val" nodes itself keeps them.
        train_fraction: "random" only: share of all nodes used for training (default 0.1).
        seed: seeds the validation draw ("hypergcn") and, with `split`, the permutation ("random").
    """

    def __init__(
        self,
        path: str | Path,
        split: int = 0,
        protocol: Literal["hypergcn", "random"] = "hypergcn",
        val_fraction: float | None = None,
        train_fraction: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if split < 0:
            raise DataError(path, f"split must be a non-negative run index, got {split}")
        if protocol == "hypergcn" and train_fraction is not None:
            raise DataError(
                path, "train_fraction applies to protocol random; HyperGCN splits fix the train nodes"
            )
        val = (0.2 if protocol == "hypergcn" else 0.1) if val_fraction is None else val_fraction
        train = 0.1 if train_fraction is None else train_fraction
        if not 0.0 <= val < 1.0:
            raise DataError(path, f"val_fraction must be in [0, 1), got {val:g}")
        if protocol == "random" and not (0.0 < train and train + val < 1.0):
            raise DataError(
                path, f"train_fraction {train:g} + val_fraction {val:g} must leave test nodes (sum below 1)"
            )
        self.save_hyperparameters()
        self.path = Path(path)
        self.val_fraction, self.train_fraction = val, train
        self.batch: NodeBatch | None = None

    def _parts(self, folder: Path, n: int) -> dict[str, np.ndarray]:
        """Train, val and test node ids of this run under the chosen protocol."""
        if self.hparams.protocol == "random":
            return random_split(
                n, self.train_fraction, self.val_fraction, self.hparams.seed, self.hparams.split
            )
        parts = read_split(folder / "splits.json", self.hparams.split, n)
        if "val" not in parts:
            rng = np.random.default_rng(self.hparams.seed)
            val = rng.choice(parts["test"], size=round(self.val_fraction * len(parts["test"])), replace=False)
            parts["val"] = np.sort(val)
            parts["test"] = np.setdiff1d(parts["test"], val)
        return parts

    def setup(self, stage: str | None = None) -> None:
        if self.batch is not None:
            return
        folder = self.path
        if not folder.is_dir():
            raise DataError(
                folder, "not a folder with hyperedges.json, features.npz, labels.npy, splits.json"
            )
        feature_file = (
            folder / "features.npz" if (folder / "features.npz").exists() else folder / "features.npy"
        )
        x = read_features(feature_file)
        n = x.shape[0]
        labels = read_labels(folder / "labels.npy", n)
        edges = read_hyperedges(folder / "hyperedges.json", n)
        parts = self._parts(folder, n)
        node_idx, edge_idx = incidences(edges)

        def mask(ids: np.ndarray) -> torch.Tensor:
            m = torch.zeros(n, dtype=torch.bool)
            m[torch.from_numpy(ids)] = True
            return m

        self.batch = NodeBatch(
            graph=Hypergraph(torch.from_numpy(x), node_idx, edge_idx, len(edges)),
            y=torch.from_numpy(labels),
            train_mask=mask(parts["train"]),
            val_mask=mask(parts["val"]),
            test_mask=mask(parts["test"]),
        )

    def model_kwargs(self) -> dict[str, Any]:
        assert self.batch is not None, "call setup() first"
        return {"in_dim": self.batch.graph.x.shape[1], "num_classes": int(self.batch.y.max()) + 1}

    def summary(self) -> dict[str, Any]:
        """Nodes, hyperedges, incidences, features, nodes per class and split (for `plexlab data check`)."""
        assert self.batch is not None, "call setup() first"
        graph, y = self.batch.graph, self.batch.y
        counts = torch.bincount(y).tolist()
        return {
            "nodes": graph.num_nodes,
            "hyperedges": graph.num_edges,
            "incidences": int(graph.node_idx.numel()),
            "features": int(graph.x.shape[1]),
            "nodes per class": ", ".join(f"{c}: {k}" for c, k in enumerate(counts)),
            "train nodes": int(self.batch.train_mask.sum()),
            "val nodes": int(self.batch.val_mask.sum()),
            "test nodes": int(self.batch.test_mask.sum()),
        }

    def _loader(self) -> DataLoader:
        assert self.batch is not None, "call setup() first"
        return DataLoader([self.batch], batch_size=None, collate_fn=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def sample_ids(self) -> list[str]:
        assert self.batch is not None, "call setup() first"
        return [str(i) for i in range(self.batch.graph.num_nodes)]
