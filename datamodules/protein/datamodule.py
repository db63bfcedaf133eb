"""ProteinDataModule: protein chains as (ESM tokens, residue graph) for pretraining or EC/GO tuning.

Inputs (one of): `path`, a folder of PDB/mmCIF files (gzipped or not; all protein chains) or one file;
`chains_file`, a TSV with `file` and `chain` columns (files relative to the TSV's folder, or to `path` when
given); `fasta_file`, sequences only (no structure encoder then). Chains that cannot be used are rejected with
a one-line reason (`skipped`, `skip_table()`), or raise `DataError` with `strict=True`. Unreadable files are
rejected the same way. Labels: `labels_file`, a DeepFRI EC/GO annotation file or a TSV (see `labels.py`),
its `label_column` (`ec`, `go_mf`, `go_bp`, `go_cc`, or a TSV column) in `function` mode; a DeepFRI file's
term list is the label space. Families from the TSV's `family`/`superfamily` columns (or `scop2_family`/
`scop2_superfamily`) or from `scop2_dir` (SCOP2 + SIFTS).

Featurized graphs are cached on disk in `cache_dir` (default `$XDG_CACHE_HOME/plexlab/protein_graphs`, i.e.
`~/.cache/plexlab/protein_graphs`), keyed by file content, detected format and featurizer settings. Files the
cache lacks are featurized by `featurize_workers` processes (default: the CPUs this process may use), with a
progress bar when stderr is a terminal. Every file a chains TSV names must exist (a missing one is an error
naming the TSV row). A file that gives no protein chain is rejected once with why (`chain '*'`).

Splits (`splits.py`): `split: deepfri` reads the benchmark's train/valid/test chain lists (by default
the `*_train.txt`, `*_valid.txt`, `*_test.txt` files beside a DeepFRI `labels_file`); chains on no list are
left out and counted (`skip_table()`). `split: random` draws entries once from `seed`, grouping chains by
PDB id so copies of one entry (PDB and mmCIF files, chains of a homo-oligomer) never straddle splits;
homologues of different entries can, so benchmark figures need the lists. A split that would be empty is a
`DataError`. In pretraining, family/superfamily partners come from the anchor's own split. Proteins longer
than `max_residues` are cropped to a window (random in training, the first window in evaluation), as in the
reference setup; the residue graph of such a chain is built on the window, so a 10,000-residue chain costs
what 550 residues do.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.paths import OutputPath
from plexlab.datamodules.protein.graph import (
    NUM_RESIDUE_TYPES,
    GraphCache,
    GraphSettings,
    default_workers,
    window_edges,
)
from plexlab.datamodules.protein.labels import read_label_table
from plexlab.datamodules.protein.reader import (
    ChainSkip,
    Scop2Index,
    is_structure_file,
    read_fasta,
)
from plexlab.datamodules.protein.splits import default_list_files, split_by_entry, split_by_lists
from plexlab.datamodules.protein.views import ProteinView, ViewSampler, crop_view, parse_view
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Batch, Data

log = logging.getLogger(__name__)


def esm_alphabet():
    """The ESM-1b/ESM-2 alphabet (ESM-2 models share it)."""
    import esm

    return esm.data.Alphabet.from_architecture("ESM-1b")


@dataclass
class ProteinBatch:
    """A batch of proteins: ESM tokens [B, L+2] (BOS, residues, EOS, padding) and a PyG batch of graphs.

    `graph.residue_pos` is each node's position in its sequence; its token is at `residue_pos + 1`.
    `labels` is [B, num_labels] float in function mode. `groups` names each protein's full sequence: equal
    groups are the same protein (PDB and mmCIF copies, identical chains), so not negatives of each other.
    """

    ids: list[str]
    tokens: torch.Tensor
    graph: Batch | None
    labels: torch.Tensor | None = None
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ProteinPairBatch:
    """Two views of each protein (pretraining): `a[i]` and `b[i]` are a positive pair."""

    a: ProteinBatch
    b: ProteinBatch
    specs: list[str]

    def __len__(self) -> int:
        return len(self.a)


class _Items(Dataset):
    def __init__(
        self, dm: ProteinDataModule, indices: list[int], train: bool, pairs: bool, pool: str | None
    ) -> None:
        self.dm, self.indices, self.train, self.pairs, self.pool = dm, indices, train, pairs, pool

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = self.indices[k]
        # training draws from torch's RNG (seed_everything; new draws each epoch); evaluation is fixed
        seed = int(torch.randint(0, 2**31 - 1, (1,))) if self.train else self.dm.seed * 1_000_003 + i
        rng = random.Random(seed)
        if self.pairs:
            a, b, spec = self.dm.sampler.sample(
                i, lambda j: self.dm.view(j, rng), rng, self.pool
            )  # own split
            return self.dm.limit(a, rng), self.dm.limit(b, rng), spec
        window = rng if self.train else None
        return self.dm.limit(self.dm.view(i, window), window), self.dm.label_vector(i)


class ProteinDataModule(pl.LightningDataModule):
    """Protein chains from PDB/mmCIF/FASTA as ESM tokens + residue graphs, with views or function labels.

    Split arguments (the others: see the module docstring):
    split: "random" (by PDB entry, `val_fraction`/`test_fraction`, `seed`) or "deepfri" (the chain lists).
    train_list_file / valid_list_file / test_list_file: the lists of `split: deepfri` (one chain id like
        `1ABC-A` a line); default: DeepFRI's files beside `labels_file`.
    val_fraction / test_fraction: entries held out by `split: random` (each > 0 holds out at least one;
        0: no such split, and its loader is an error).
    """

    def __init__(
        self,
        path: Path | str | None = None,
        chains_file: Path | str | None = None,
        fasta_file: Path | str | None = None,
        labels_file: Path | str | None = None,
        scop2_dir: Path | str | None = None,
        cache_dir: OutputPath | str | None = None,
        mode: Literal["pretrain", "function"] = "pretrain",
        label_column: str = "ec",
        views: list[str] | None = None,
        crop_length: int = 50,
        fallback_view: Literal["identity"] = "identity",
        max_residues: int = 550,
        min_residues: int = 10,
        max_offset: int = 2,
        radius: float = 10.0,
        knn: int = 10,
        min_seq_sep: int = 5,
        split: Literal["random", "deepfri"] = "random",
        train_list_file: Path | str | None = None,
        valid_list_file: Path | str | None = None,
        test_list_file: Path | str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 8,
        num_workers: int = 0,
        featurize_workers: int | None = None,
        seed: int = 0,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if sum(x is not None for x in (chains_file, fasta_file)) > 1 or (fasta_file and path):
            raise DataError(
                fasta_file or chains_file, "give structures (path/chains_file) or fasta_file, not both"
            )
        if path is None and chains_file is None and fasta_file is None:
            raise DataError("data", "give path, chains_file or fasta_file")
        self.views = list(views) if views is not None else ["crop"]
        if not self.views:
            raise DataError("data.views", "give at least one view spec")
        for v in self.views:
            try:
                parse_view(v)
            except ValueError as exc:
                raise DataError("data.views", str(exc)) from exc
        self.path, self.chains_file, self.fasta_file = path, chains_file, fasta_file
        self.labels_file, self.scop2_dir = labels_file, scop2_dir
        self.mode, self.label_column = mode, label_column
        self.crop_length, self.fallback_view = crop_length, fallback_view
        self.max_residues = max_residues
        self.settings = GraphSettings(max_offset, radius, knn, min_seq_sep, min_residues, max_residues)
        if featurize_workers is not None and featurize_workers < 1:
            raise DataError("data.featurize_workers", f"must be at least 1, got {featurize_workers}")
        self.featurize_workers = featurize_workers or default_workers()
        self.split = split
        self.list_files = {"train": train_list_file, "val": valid_list_file, "test": test_list_file}
        if split == "deepfri" and labels_file is None and None in self.list_files.values():
            raise DataError(
                "data.split", "deepfri needs labels_file (lists beside it) or all three *_list_file"
            )
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.batch_size, self.num_workers, self.seed, self.strict = batch_size, num_workers, seed, strict
        if cache_dir is None:  # graphs are always cached on disk; default: the user's cache folder
            base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            cache_dir = str(Path(base) / "plexlab" / "protein_graphs")
        self.cache_dir = cache_dir
        self.cache = GraphCache(cache_dir, self.settings)
        self._ready = False

    # ---------------------------------------------------------------- reading
    def _structure_entries(self) -> list[tuple[Path, list[str] | None]]:
        if self.chains_file is not None:
            tsv = Path(self.chains_file)
            base = Path(self.path) if self.path else tsv.parent
            try:
                rows = list(csv.DictReader(tsv.read_text().splitlines(), delimiter="\t"))
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(tsv, f"cannot read: {exc}") from exc
            if not rows or "file" not in rows[0] or "chain" not in rows[0]:
                raise DataError(tsv, "needs a header with 'file' and 'chain' columns")
            wanted: dict[Path, list[str]] = {}
            for lineno, row in enumerate(rows, 2):  # row 1 is the header
                name = (row["file"] or "").strip()
                if not name:
                    raise DataError(tsv, f"row {lineno}: empty 'file' cell")
                file = base / name
                if not file.is_file():
                    why = "is a folder" if file.is_dir() else "not found"
                    raise DataError(tsv, f"row {lineno}: file {name!r} {why} (looked for {file})")
                wanted.setdefault(file, []).append(row["chain"] or "")
            return list(wanted.items())
        root = Path(self.path)
        if root.is_dir():
            files = sorted(p for p in root.iterdir() if is_structure_file(p))
            if not files:
                raise DataError(root, "no PDB/mmCIF files (.pdb, .cif, .ent, optionally .gz)")
            others = sorted(p.name for p in root.iterdir() if p.is_file() and not is_structure_file(p))
            if others:  # said, not silent: a .gro or .pdbqt beside the structures is not read
                log.info(
                    "%s: %d files without a structure suffix not read (%s)", root, len(others), others[0]
                )
            return [(p, None) for p in files]
        if not root.exists():
            raise DataError(root, "no such file or folder")
        return [(root, None)]

    def _reject(self, skip: ChainSkip) -> None:
        if self.strict:
            raise DataError(skip.source, f"chain {skip.chain!r}: {skip.reason}: {skip.detail}")
        self.skipped.append(skip)

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        self.skipped: list[ChainSkip] = []
        self.items: list[dict[str, Any]] = []
        if self.fasta_file is not None:
            for rec in read_fasta(self.fasta_file):
                pdb, _, chain = rec.id.partition("-")  # DeepFRI's FASTA ids are PDB-CHAIN, as its labels
                self.items.append(
                    {
                        "id": rec.id,
                        "pdb_id": pdb.upper(),
                        "chain": chain,
                        "source": rec.source,
                        "sequence": rec.sequence,
                        "graph": None,
                    }
                )
        else:
            entries = self._structure_entries()
            loaded = self.cache.load_many([file for file, _ in entries], self.featurize_workers)
            for (file, chains), result in zip(entries, loaded, strict=True):
                if isinstance(result, DataError):
                    if self.strict:
                        raise result
                    for c in chains or ["*"]:
                        self._reject(ChainSkip(file.name, c, "unreadable file", result.problem))
                    continue
                graphs, skips = result
                by_chain = {g["chain"]: g for g in graphs}
                skip_of = {s.chain: s for s in skips}
                if chains is None:
                    chosen = graphs
                    for s in skips:
                        self._reject(s)
                else:
                    chosen = []
                    for c in chains:
                        if c in by_chain:
                            chosen.append(by_chain[c])
                        elif c in skip_of:
                            self._reject(skip_of[c])
                        else:
                            have = ", ".join(sorted(repr(k) for k in by_chain)) or "none"
                            self._reject(
                                ChainSkip(
                                    file.name,
                                    c,
                                    "chain not found",
                                    f"no protein chain {c!r} (protein chains: {have})",
                                )
                            )
                for g in chosen:
                    self.items.append({**g, "graph": g})
        self._attach_labels()
        if not self.items:
            table = ", ".join(f"{n} {reason}" for reason, n in self.skip_table().most_common())
            why = f": {table}; first: {self.skipped[0]}" if self.skipped else ""
            raise DataError(
                self.path or self.chains_file or self.fasta_file,
                f"no usable protein chain ({len(self.skipped)} rejected{why})",
            )
        self.items.sort(key=lambda it: it["id"])
        self._split()
        self._set_label_names()
        self.sampler = ViewSampler(
            self.views,
            [it["family"] for it in self.items],
            [it["superfamily"] for it in self.items],
            crop_length=self.crop_length,
            fallback=self.fallback_view,
            pools={"train": self.train_idx, "val": self.val_idx, "test": self.test_idx},
        )
        if self.skipped:
            log.info(
                "protein data: %d chains used, %d rejected: %s",
                len(self.items),
                len(self.skipped),
                dict(self.skip_table()),
            )
        self._ready = True

    def _attach_labels(self) -> None:
        labels = read_label_table(self.labels_file) if self.labels_file else None
        table, keying = (labels.rows, labels.keying) if labels else ({}, "")
        if self.mode == "function" and labels is None:
            raise DataError("data.labels_file", "function mode needs a labels file")
        if self.mode == "function" and self.label_column not in labels.columns:
            have = ", ".join(labels.columns) or "none"
            raise DataError(self.labels_file, f"no {self.label_column!r} labels (label columns: {have})")
        scop = Scop2Index(self.scop2_dir) if self.scop2_dir else None
        kept = []
        for it in self.items:
            key = (Path(it["source"]).name, it["chain"]) if keying == "file" else (it["pdb_id"], it["chain"])
            row = table.get(key, {})
            fam = row.get("family") or row.get("scop2_family") or []
            sfam = row.get("superfamily") or row.get("scop2_superfamily") or []
            if scop is not None and it["pdb_id"]:
                fam = fam or scop.family(it["pdb_id"], it["chain"])
                sfam = sfam or scop.superfamily(it["pdb_id"], it["chain"])
            it["family"], it["superfamily"] = list(fam), list(sfam)
            it["labels"] = list(row.get(self.label_column, []))
            if self.mode == "function" and not it["labels"]:
                self._reject(
                    ChainSkip(
                        Path(it["source"]).name,
                        it["chain"],
                        "no label",
                        f"no {self.label_column!r} label in {self.labels_file}",
                    )
                )
                continue
            kept.append(it)
        self.items = kept
        self._vocabulary = labels.vocabularies.get(self.label_column) if labels else None

    def _set_label_names(self) -> None:
        # a declared term list (DeepFRI) is the benchmark's label space: the same head for every split and run
        used = self._vocabulary or sorted({lab for it in self.items for lab in it["labels"]})
        self.label_names = list(used)
        self._label_index = {lab: j for j, lab in enumerate(self.label_names)}

    def _split(self) -> None:
        self._split_problem: DataError | None = None
        if self.split == "deepfri":
            lists = default_list_files(self.labels_file) if self.labels_file else {}
            lists.update({k: Path(v) for k, v in self.list_files.items() if v is not None})
            keys = [(it["pdb_id"], it["chain"]) for it in self.items]
            pools, unlisted = split_by_lists(keys, lists)
            names = ", ".join(p.name for p in lists.values())
            for i in unlisted:  # the benchmark's chains only: the others are counted, not used
                it = self.items[i]
                self.skipped.append(
                    ChainSkip(
                        Path(it["source"]).name,
                        it["chain"],
                        "not in split lists",
                        f"{it['pdb_id']}-{it['chain']} is on none of {names}",
                    )
                )
            dropped = set(unlisted)
            kept = [i for i in range(len(self.items)) if i not in dropped]
            renumber = {old: new for new, old in enumerate(kept)}
            self.items = [self.items[i] for i in kept]
            pools = {name: [renumber[i] for i in idx] for name, idx in pools.items()}
        else:
            try:
                pools = split_by_entry(
                    [it["pdb_id"] or it["id"] for it in self.items],
                    self.val_fraction,
                    self.test_fraction,
                    self.seed,
                )
            except DataError as exc:
                # too few entries to split: reading, views and predict still work; the split loaders raise
                self._split_problem = exc
                pools = {"train": [], "val": [], "test": []}
        self.train_idx, self.val_idx, self.test_idx = pools["train"], pools["val"], pools["test"]
        log.info(
            "protein data: %s split, chains train %d, val %d, test %d",
            self.split,
            len(self.train_idx),
            len(self.val_idx),
            len(self.test_idx),
        )

    def skip_table(self) -> Counter:
        """Rejections counted by reason: chains, and files that gave no protein chain ('no protein chain',
        'unreadable file'; their chain is '*' and `skipped` says why)."""
        return Counter(s.reason for s in self.skipped)

    # ---------------------------------------------------------------- items
    def view(self, i: int, window: random.Random | None = None) -> ProteinView:
        """Protein i with its residue graph. A chain longer than `max_residues` comes as one window of it
        (drawn with `window`; the first window without) with the graph built on that window."""
        it = self.items[i]
        g = it["graph"]
        data = None
        if g is not None and len(it["sequence"]) > self.max_residues:
            return self._window(it, window)
        if g is not None:
            data = Data(
                x=g["x"],
                pos=g["pos"],
                residue_pos=g["seq_index"],
                edge_index=g["edge_index"],
                edge_type=g["edge_type"],
                num_nodes=g["x"].shape[0],
            )
        return ProteinView(it["id"], it["sequence"], data)

    def _window(self, it: dict[str, Any], rng: random.Random | None) -> ProteinView:
        g = it["graph"]
        nodes = Data(
            x=g["x"],
            pos=g["pos"],
            residue_pos=g["seq_index"],
            edge_index=torch.empty((2, 0), dtype=torch.long),  # stored without edges: built below
            edge_type=torch.empty(0, dtype=torch.long),
            num_nodes=g["x"].shape[0],
        )
        cut = crop_view(ProteinView(it["id"], it["sequence"], nodes), self.max_residues, rng or _First())
        cut.graph.edge_index, cut.graph.edge_type = window_edges(
            cut.graph.pos, cut.graph.residue_pos, self.settings
        )
        return cut

    def limit(self, v: ProteinView, rng: random.Random | None) -> ProteinView:
        """At most `max_residues` sequence positions: a random window (rng) or the first one (None)."""
        if len(v.sequence) <= self.max_residues:
            return v
        return crop_view(v, self.max_residues, rng if rng is not None else _First())

    def label_vector(self, i: int) -> torch.Tensor | None:
        if self.mode != "function":
            return None
        y = torch.zeros(len(self.label_names))
        for lab in self.items[i]["labels"]:
            y[self._label_index[lab]] = 1.0
        return y

    # ---------------------------------------------------------------- batches
    def _batch(
        self, views: list[ProteinView], labels: list[torch.Tensor | None] | None = None
    ) -> ProteinBatch:
        if not hasattr(self, "_converter"):
            self._converter = esm_alphabet().get_batch_converter()
        _, _, tokens = self._converter([(v.id, v.sequence) for v in views])
        graph = None
        if all(v.graph is not None for v in views):
            graph = Batch.from_data_list([v.graph for v in views])
        y = None
        if labels is not None and all(t is not None for t in labels):
            y = torch.stack(labels)
        if not hasattr(self, "_group"):
            self._group = {
                it["id"]: hashlib.sha1(it["sequence"].encode()).hexdigest()[:16] for it in self.items
            }
        return ProteinBatch([v.id for v in views], tokens, graph, y, [self._group[v.id] for v in views])

    def collate_pairs(self, items: list[tuple[ProteinView, ProteinView, str]]) -> ProteinPairBatch:
        return ProteinPairBatch(
            self._batch([a for a, _, _ in items]),
            self._batch([b for _, b, _ in items]),
            [s for _, _, s in items],
        )

    def collate_single(self, items: list[tuple[ProteinView, torch.Tensor | None]]) -> ProteinBatch:
        return self._batch([v for v, _ in items], [y for _, y in items])

    def _loader(self, indices: list[int], train: bool, pairs: bool, pool: str | None = None) -> DataLoader:
        return DataLoader(
            _Items(self, indices, train, pairs, pool),
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and pairs and len(indices) > self.batch_size,  # InfoNCE wants full batches
            num_workers=self.num_workers,
            collate_fn=self.collate_pairs if pairs else self.collate_single,
            persistent_workers=self.num_workers > 0,
        )

    def _split_loader(self, pool: str, indices: list[int]) -> DataLoader:
        if self._split_problem is not None:
            raise self._split_problem
        if not indices:  # only a fraction of 0 gets here: empty list splits are refused in setup
            key = "val_fraction" if pool == "val" else "test_fraction"
            raise DataError(f"data.{key}", f"is 0: there is no {pool} split to load")
        return self._loader(indices, pool == "train", self.mode == "pretrain", pool)

    def train_dataloader(self) -> DataLoader:
        return self._split_loader("train", self.train_idx)

    def val_dataloader(self) -> DataLoader:
        return self._split_loader("val", self.val_idx)

    def test_dataloader(self) -> DataLoader:
        return self._split_loader("test", self.test_idx)

    def predict_dataloader(self) -> DataLoader:
        """All chains, one view each (no cropping beyond max_residues), in `sample_ids()` order."""
        return self._loader(list(range(len(self.items))), False, False)

    def sample_ids(self) -> list[str]:
        """Ids ('<file name>:<chain>', or FASTA ids) in predict_dataloader order."""
        return [it["id"] for it in self.items]

    def model_kwargs(self) -> dict[str, Any]:
        """Data-derived model arguments: residue vocabulary, relations, label count (function mode)."""
        kw: dict[str, Any] = {
            "num_residue_types": NUM_RESIDUE_TYPES,
            "num_relations": self.settings.num_relations,
        }
        if self.mode == "function":
            kw["num_labels"] = len(self.label_names)
        return kw


class _First:
    """A stand-in RNG that always picks the first window (deterministic evaluation crops)."""

    def randrange(self, n: int) -> int:
        return 0
