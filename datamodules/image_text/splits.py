"""Train/val/test split by image: an image and all its captions belong to exactly one split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from plexlab.datamodules.errors import DataError


def split_images(
    split_of_image: list[str] | None,
    n_images: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    source: Path,
) -> dict[str, list[int]]:
    """Image indices per split: the CSV's split column when given, else a seeded random split.

    A non-empty random evaluation split holds at least two images (retrieval among one candidate is
    meaningless); fewer than two training images left is a DataError naming `source`.
    """
    if split_of_image is not None:
        out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for i, s in enumerate(split_of_image):
            out[s].append(i)
        return out
    perm = np.random.default_rng(seed).permutation(n_images).tolist()
    n_val = max(2, round(val_fraction * n_images)) if val_fraction > 0 else 0
    n_test = max(2, round(test_fraction * n_images)) if test_fraction > 0 else 0
    if n_images - n_val - n_test < 2:
        raise DataError(source, f"{n_images} images are too few to split")
    return {
        "val": sorted(perm[:n_val]),
        "test": sorted(perm[n_val : n_val + n_test]),
        "train": sorted(perm[n_val + n_test :]),
    }
