"""Compound-protein affinity data: SMILES + protein sequence + affinity, optional contact maps.

Inputs (`path`):
- a directory of TSV files (`train_name`, `test_name`, `extra_test_names`; e.g. the BindingDB sets),
- a single TSV file (then the split is carved from it), or
- a JSON list of complexes (`pdb`, `sequence`, `smiles`, `pK`) with `<pdb>_contacts.npy` beside it (PDBbind).

TSV columns: `smiles`, `protein_sequence` (or `sequence`), the target (`target_column`, default: the first of
pKd, pK, affinity, y). Optional columns (paths relative to the TSV's folder): `contacts` (.npy, residues x
atoms), `protein_contacts` (.npy, residues x residues) and `structure` (PDB/mmCIF, optional `chain`), from
which the protein contact map is computed (C-alpha within `contact_cutoff` Angstrom, read with gemmi).

Where the pieces live: `readers.py` (files -> records, one-line DataErrors), `contacts.py` (contact graphs and
maps), `splits.py`, `sampler.py` (length buckets), `batch.py` (`AffinityBatch` and its padding), `records.py`.

Choices where the paper is silent:
- Without a protein structure or supplied protein map, the contact-map branch gets a sequence-neighbour band
  (|i - j| <= `band_width`, self included): the GNN then acts as local attention along the chain.
- Compound-protein contact maps may have one column per heavy atom, or one per atom of the SMILES as written
  with explicit hydrogens (the PDBbind set here is like that, despite its README); in the latter case the
  heavy-atom columns are kept, in SMILES order. Any other shape is a DataError.
- Proteins repeated in a batch are encoded once (`AffinityBatch.protein_of` maps samples to unique proteins).
- Training batches are bucketed by protein length (shuffled buckets) so per-batch padding stays small;
  there is no fixed maximum length anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from plexlab.datamodules.affinity.batch import AffinityBatch, Collator
from plexlab.datamodules.affinity.molecule import ATOM_DIM, COMPOSITION_DIM, PROTEIN_VOCAB
from plexlab.datamodules.affinity.readers import PairReader
from plexlab.datamodules.affinity.records import CompoundEntry, PairRecord, ProteinEntry
from plexlab.datamodules.affinity.sampler import BucketBatchSampler
from plexlab.datamodules.affinity.splits import Split, split_records
from plexlab.datamodules.errors import DataError
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

__all__ = ["AffinityBatch", "AffinityDataModule"]


class AffinityDataModule(pl.LightningDataModule):
    """Compound-protein pairs with affinities and optional contact maps (see the module docstring).

    Splits (`split`):
    - "given": train file -> train + validation (`val_fraction`, random); test file -> test.
    - "random" / "unseen_protein" / "unseen_compound": test (`test_fraction`) and validation carved from the
      train file, grouped by protein or compound for the unseen splits (no group crosses splits); the test
      file, if any, then becomes an extra test set.
    - "all": every record in train, validation and test (a smoke test that overfits, e.g. 14 complexes).
    `extra_test_names` are more test sets (e.g. held-out protein classes), tested after the main test set.
    `pool_batches`: training batches are length-bucketed inside random pools of that many batches (see
    `BucketBatchSampler`); None sorts the whole training set by length (fewest padded residues).
    """

    def __init__(
        self,
        path: Path | str,
        train_name: str = "train.tsv",
        test_name: str | None = "test.tsv",
        extra_test_names: list[str] | None = None,
        split: Split = "given",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        target_column: str | None = None,
        skip_invalid: bool = False,
        lenient_sanitize: bool = False,
        band_width: int = 2,
        contact_cutoff: float = 8.0,
        fingerprint_bits: int = 2048,
        fingerprint_radius: int = 2,
        max_train_samples: int | None = None,
        batch_size: int = 32,
        pool_batches: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.train_name = train_name
        self.test_name = test_name
        self.extra_test_names = list(extra_test_names or [])
        self.split = split
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.target_column = target_column
        self.skip_invalid = skip_invalid
        self.lenient_sanitize = lenient_sanitize
        self.band_width = band_width
        self.contact_cutoff = contact_cutoff
        self.fingerprint_bits = fingerprint_bits
        self.fingerprint_radius = fingerprint_radius
        self.max_train_samples = max_train_samples
        self.batch_size = batch_size
        self.pool_batches = pool_batches
        self.num_workers = num_workers
        self.seed = seed
        self._proteins: list[ProteinEntry] = []
        self._compounds: list[CompoundEntry] = []
        self.sets: dict[str, list[PairRecord]] = {}
        self.skipped: dict[str, int] = {}
        self._ready = False

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Read the train, test and extra test files, split, and index the training proteins. Runs once."""
        if self._ready:
            return
        reader = self._reader()
        train_file, test_file = self._files()
        pool = reader.read(train_file)
        if not pool:
            raise DataError(train_file, "no usable records")
        test = self._read_test(reader, test_file)
        extra = self._read_extra_tests(reader, test_file, test)
        rng = np.random.default_rng(self.seed)
        sets = split_records(pool, test, self.split, self.val_fraction, self.test_fraction, rng)
        sets["train"] = self._cap_train(sets["train"], rng)
        for name, recs in sets.items():
            if not recs:
                raise DataError(self.path, f"the {name} split is empty")
        self.sets = sets | extra
        self._proteins, self._compounds, self.skipped = reader.proteins, reader.compounds, reader.skipped
        self._collate = self._collator()
        for src, n in self.skipped.items():
            log.warning("%s: skipped %d records with invalid SMILES or sequence", src, n)
        log.info("affinity data: %s", {k: len(v) for k, v in self.sets.items()})
        self._ready = True

    def _reader(self) -> PairReader:
        """A reader with this data module's parsing and featurization options, its tables empty."""
        return PairReader(
            self.target_column,
            self.skip_invalid,
            self.lenient_sanitize,
            self.contact_cutoff,
            self.fingerprint_bits,
            self.fingerprint_radius,
        )

    def _collator(self) -> Collator:
        """Pads records from the tables read; "unseen" means absent from the training split."""
        train = self.sets["train"]
        proteins, compounds = {r.protein for r in train}, {r.compound for r in train}
        return Collator(self._proteins, self._compounds, self.band_width, proteins, compounds)

    def _files(self) -> tuple[Path, Path | None]:
        """The train file and the test file (None when `path` is a single file or there is no test_name)."""
        if not self.path.is_dir():
            return self.path, None
        return self.path / self.train_name, self.path / self.test_name if self.test_name else None

    def _read_test(self, reader: PairReader, test_file: Path | None) -> list[PairRecord] | None:
        """The test file's records: the "given" split's test set, else an extra one (unread for "all")."""
        if self.split == "given" and test_file is None:
            raise DataError(self.path, "split 'given' needs a test file (test_name)")
        if self.split == "all" or test_file is None:
            return None
        return reader.read(test_file)

    def _read_extra_tests(
        self, reader: PairReader, test_file: Path | None, test: list[PairRecord] | None
    ) -> dict[str, list[PairRecord]]:
        """More test sets by file stem: the test file (unless split "given"), then extra_test_names."""
        extra = {}
        if test is not None and test_file is not None and self.split != "given":
            extra[test_file.stem] = test
        for name in self.extra_test_names:
            file = self.path / name if self.path.is_dir() else self.path.parent / name
            extra[Path(name).stem] = reader.read(file)
        return extra

    def _cap_train(self, train: list[PairRecord], rng: np.random.Generator) -> list[PairRecord]:
        """A seeded random `max_train_samples` of the training records (all of them without a cap)."""
        if self.max_train_samples is None or len(train) <= self.max_train_samples:
            return train
        keep = np.sort(rng.choice(len(train), self.max_train_samples, replace=False))
        return [train[i] for i in keep]

    @property
    def test_set_names(self) -> list[str]:
        """Names of the test sets, in the order of `test_dataloader()`."""
        return ["test"] + [k for k in self.sets if k not in ("train", "val", "test")]

    def model_kwargs(self) -> dict[str, Any]:
        """Data-derived constructor arguments shared by CPAC and AffinityMLP (target stats from train)."""
        y = np.array([r.target for r in self.sets["train"]], dtype=np.float64)
        return {
            "target_mean": float(y.mean()),
            "target_std": float(y.std()) if len(y) > 1 and y.std() > 0 else 1.0,
            "atom_dim": ATOM_DIM,
            "protein_vocab": PROTEIN_VOCAB,
            "fingerprint_dim": self.fingerprint_bits,
            "composition_dim": COMPOSITION_DIM,
        }

    # ---------------------------------------------------------------- batches
    def collate(
        self, records: list[PairRecord], subset: str, indices: list[int] | None = None
    ) -> AffinityBatch:
        """Pad a list of records into an AffinityBatch (proteins deduplicated, padding masked)."""
        return self._collate(records, subset, indices)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        recs = self.sets[name]
        lengths = [len(self._proteins[r.protein].residues) for r in recs]
        sampler = BucketBatchSampler(lengths, self.batch_size, shuffle, self.seed, self.pool_batches)
        return DataLoader(
            list(range(len(recs))),
            batch_sampler=sampler,
            collate_fn=lambda idx: self.collate([recs[i] for i in idx], name, idx),
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(name, shuffle=False) for name in self.test_set_names]

    def _all_records(self) -> list[PairRecord]:
        seen: set[int] = set()
        out = []
        for recs in self.sets.values():
            for r in recs:
                if id(r) not in seen:
                    seen.add(id(r))
                    out.append(r)
        return out

    def predict_dataloader(self) -> DataLoader:
        recs = self._all_records()
        return DataLoader(
            list(range(len(recs))),
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=lambda idx: self.collate([recs[i] for i in idx], "predict", idx),
            num_workers=self.num_workers,
        )

    def sample_ids(self) -> list[str]:
        """Ids (`<file stem>:<line or pdb>`) in the order of `predict_dataloader()`."""
        return [r.source for r in self._all_records()]
