"""Length-bucketed batches of compound-protein pairs: little padding, many proteins per training batch."""

from __future__ import annotations

import math

import numpy as np
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar protein length (less padding); batch order shuffled per epoch when `shuffle`.

    With `pool_batches` (training), samples are first shuffled into random pools of `pool_batches` batches and
    sorted by length only inside each pool: a global sort puts the few samples of one protein (all the same
    length) in the same batch, so a batch holds 2-5 proteins and its gradient is about those alone; pools keep
    the padding small while a batch mixes many proteins.
    """

    def __init__(
        self, lengths: list[int], batch_size: int, shuffle: bool, seed: int, pool_batches: int | None = None
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool_batches = pool_batches
        self.epoch = 0

    def __iter__(self):  # type: ignore[override]
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        if self.shuffle and self.pool_batches:
            perm = rng.permutation(len(self.lengths))
            pool = self.batch_size * self.pool_batches
            order = np.concatenate(
                [
                    p[np.argsort(self.lengths[p], kind="stable")]
                    for p in np.split(perm, range(pool, len(perm), pool))
                ]
            )
            # batches never cross a pool boundary
            starts = [
                s
                for p0 in range(0, len(order), pool)
                for s in range(p0, min(p0 + pool, len(order)), self.batch_size)
            ]
            ends = [min(s + self.batch_size, (s // pool + 1) * pool, len(order)) for s in starts]
            batches = [order[s:e].tolist() for s, e in zip(starts, ends, strict=True)]
            rng.shuffle(batches)
            yield from batches
            return
        if self.shuffle:
            # random tie-breaking (noise below one residue) so equal-length samples mix across epochs
            order = np.argsort(self.lengths + rng.random(len(self.lengths)), kind="stable")
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        yield from batches

    def __len__(self) -> int:
        if self.shuffle and self.pool_batches:
            pool = self.batch_size * self.pool_batches
            full, rest = divmod(len(self.lengths), pool)
            return full * self.pool_batches + math.ceil(rest / self.batch_size)
        return math.ceil(len(self.lengths) / self.batch_size)
