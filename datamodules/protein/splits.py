"""Train/validation/test splits of protein chains: the benchmark's chain lists, or random by PDB entry.

- `split_by_lists`: DeepFRI's lists (`nrPDB-EC_2020.04_train.txt`, `_valid.txt`, `_test.txt`: one chain id
  like `1ABC-A` a line), which hold chains of at most 95 % sequence identity across splits. A chain on the
  training list and on an evaluation list is an error (leakage); validation and test may share chains only
  when the user names the same list for both.
- `split_by_entry`: random, grouping the chains of one PDB entry (PDB and mmCIF copies, the chains of a
  homo-oligomer) so they never straddle splits. Homologues of different entries can; use the lists for
  benchmark figures.

A split that would be empty is a one-line `DataError`, never a silent reuse of another split.
"""

from __future__ import annotations

import random
from pathlib import Path

from plexlab.datamodules.errors import DataError
from plexlab.datamodules.protein.labels import LabelKey, chain_key

SPLITS = ("train", "val", "test")
LIST_SUFFIX = {"train": "train", "val": "valid", "test": "test"}  # DeepFRI's file names


def default_list_files(labels_file: str | Path) -> dict[str, Path]:
    """DeepFRI's lists beside its annotations: `X_annot.tsv` -> `X_train.txt`, `X_valid.txt`, `X_test.txt`."""
    labels_file = Path(labels_file)
    stem = labels_file.name.split(".tsv")[0].removesuffix("_annot")
    return {split: labels_file.with_name(f"{stem}_{LIST_SUFFIX[split]}.txt") for split in SPLITS}


def read_chain_list(path: str | Path) -> list[LabelKey]:
    """Chain ids of a split list, one a line (`1ABC-A`; or a CSV's first field, as DeepFRI's test.csv)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read split list: {exc}") from exc
    keys = []
    for lineno, line in enumerate(lines, 1):
        first = line.replace(",", "\t").split("\t")[0].strip()
        if not first or first.startswith("#") or (lineno == 1 and first == "PDB-chain"):
            continue
        keys.append(chain_key(path, f"line {lineno}", first))
    if not keys:
        raise DataError(path, "split list names no chain")
    return keys


def split_by_lists(keys: list[LabelKey], lists: dict[str, Path]) -> tuple[dict[str, list[int]], list[int]]:
    """({split: item indices}, indices on no list) for items keyed (PDB id, chain); one list file a split."""
    listed = {split: set(read_chain_list(lists[split])) for split in SPLITS}
    for other in ("val", "test"):
        both = listed["train"] & listed[other]
        if both:
            pdb, chain = sorted(both)[0]
            raise DataError(
                lists[other],
                f"{len(both)} chains also on the training list {lists['train'].name} (first: {pdb}-{chain})",
            )
    if lists["val"].resolve() != lists["test"].resolve() and listed["val"] & listed["test"]:
        pdb, chain = sorted(listed["val"] & listed["test"])[0]
        raise DataError(
            lists["test"], f"chain {pdb}-{chain} is also on the validation list {lists['val'].name}"
        )
    pools = {split: [i for i, k in enumerate(keys) if k in listed[split]] for split in SPLITS}
    unlisted = [i for i, k in enumerate(keys) if not any(k in listed[s] for s in SPLITS)]
    for split in SPLITS:
        if not pools[split]:
            sizes = ", ".join(f"{s} {len(pools[s])}" for s in SPLITS)
            raise DataError(
                lists[split],
                f"no chain of the data is on this {split} list ({sizes} chains listed of {len(keys)})",
            )
    return pools, unlisted


def split_by_entry(
    entries: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[int]]:
    """Random split of item indices by entry (one entry per item): each requested split gets >= 1 entry."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError("data.val_fraction", "with test_fraction: each in [0, 1), their sum below 1")
    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        groups.setdefault(entry, []).append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_val = max(1, round(val_fraction * len(keys))) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * len(keys))) if test_fraction > 0 else 0
    if len(keys) - n_val - n_test < 1:
        raise DataError(
            "data.val_fraction",
            f"{len(keys)} PDB entries are too few to hold out val_fraction {val_fraction:g} and "
            f"test_fraction {test_fraction:g} and still train on one (lower them, or give more entries)",
        )

    def pick(ks: list[str]) -> list[int]:
        return sorted(i for k in ks for i in groups[k])

    return {
        "val": pick(keys[:n_val]),
        "test": pick(keys[n_val : n_val + n_test]),
        "train": pick(keys[n_val + n_test :]),
    }
