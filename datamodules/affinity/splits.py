"""Train/validation/test splits of affinity pairs: random, or grouped so that no protein (or compound) of the
test and validation sets is seen in training."""

from __future__ import annotations

from typing import Literal

import numpy as np
from plexlab.datamodules.affinity.records import PairRecord

Split = Literal["given", "random", "unseen_protein", "unseen_compound", "all"]


def carve(
    records: list[PairRecord], fraction: float, by: str, rng: np.random.Generator
) -> tuple[list[PairRecord], list[PairRecord]]:
    """Split records into (rest, carved) with about `fraction` carved, grouped by protein/compound."""
    if by == "unseen_protein":
        groups = np.array([r.protein for r in records])
    elif by == "unseen_compound":
        groups = np.array([r.compound for r in records])
    else:
        groups = np.arange(len(records))
    uniq = np.unique(groups)
    rng.shuffle(uniq)
    carved_groups, n = set(), 0
    for g in uniq:
        if n >= fraction * len(records):
            break
        carved_groups.add(int(g))
        n += int((groups == g).sum())
    mask = np.array([int(g) in carved_groups for g in groups], dtype=bool)
    return [r for r, m in zip(records, mask, strict=True) if not m], [
        r for r, m in zip(records, mask, strict=True) if m
    ]


def split_records(
    pool: list[PairRecord],
    test: list[PairRecord] | None,
    split: Split,
    val_fraction: float,
    test_fraction: float,
    rng: np.random.Generator,
) -> dict[str, list[PairRecord]]:
    """train, val and test from the pool (the train file) and, for split "given", the test file's records.

    "all": the pool in all three; "given": validation carved at random from the pool, test = `test`;
    otherwise test then validation carved from the pool (`val_fraction` of the whole pool).
    """
    if split == "all":
        return {"train": pool, "val": pool, "test": pool}
    if split == "given":
        assert test is not None, "split 'given' needs the test file's records"
        train, val = carve(pool, val_fraction, "random", rng)
        return {"train": train, "val": val, "test": test}
    rest, held = carve(pool, test_fraction, split, rng)
    train, val = carve(rest, val_fraction / max(1e-9, 1 - test_fraction), split, rng)
    return {"train": train, "val": val, "test": held}
