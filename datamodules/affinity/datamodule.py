"""Compound-protein affinity data: SMILES + protein sequence + affinity, optional contact maps.

Inputs (`path`):
- a directory of TSV files (`train_name`, `test_name`, `extra_test_names`; e.g. the BindingDB sets),
- a single TSV file (then the split is carved from it), or
- a JSON list of complexes (`pdb`, `sequence`, `smiles`, `pK`) with `<pdb>_contacts.npy` beside it (PDBbind).

TSV columns: `smiles`, `protein_sequence` (or `sequence`), the target (`target_column`, default: the first of
pKd, pK, affinity, y). Optional columns (paths relative to the TSV's folder): `contacts` (.npy, residues x
atoms),
`protein_contacts` (.npy, residues x residues) and `structure` (PDB/mmCIF, optional `chain`), from which the
protein contact map is computed (C-alpha within `contact_cutoff` Angstrom, read with gemmi).

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

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from plexlab.datamodules.affinity.molecule import (
    ATOM_DIM,
    COMPOSITION_DIM,
    PROTEIN_VOCAB,
    MolGraph,
    SmilesError,
    encode_protein,
    featurize_smiles,
    invalid_residue,
    morgan_fingerprint,
    protein_composition,
)
from plexlab.datamodules.errors import DataError
from torch.utils.data import DataLoader, Sampler

log = logging.getLogger(__name__)

TARGET_COLUMNS = ("pKd", "pK", "affinity", "y")


@dataclass
class AffinityBatch:
    """A padded batch of compound-protein pairs.

    P unique proteins (padded to L residues), B samples (compounds padded to A atoms).
    - residues [P, L] long (0 = padding), protein_mask [P, L] bool, protein_edges [2, E] long: directed edges
      (source, target) of the protein contact graphs as flat indices into the P*L grid (self loops included).
    - protein_of [B] long: row of each sample's protein.
    - atom_x [B, A, F] float, atom_mask [B, A] bool, atom_adj [B, A, A] float (bonds, symmetric, no self
      loops).
    - affinity [B] float; contacts [B, L, A] float (zeros where absent); has_contacts [B] bool.
    - fingerprint [B, bits] float, composition [B, 420] float (for the fingerprint baseline).
    - unseen_protein / unseen_compound [B] bool: not present in the training split.
    - subset: name of the split or file the batch comes from ("train", "val", "test", or a file stem).
    """

    residues: torch.Tensor
    protein_mask: torch.Tensor
    protein_edges: torch.Tensor
    protein_of: torch.Tensor
    atom_x: torch.Tensor
    atom_mask: torch.Tensor
    atom_adj: torch.Tensor
    affinity: torch.Tensor
    contacts: torch.Tensor
    has_contacts: torch.Tensor
    fingerprint: torch.Tensor
    composition: torch.Tensor
    unseen_protein: torch.Tensor
    unseen_compound: torch.Tensor
    index: torch.Tensor
    subset: str = "train"

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(self.affinity.shape[0])


@dataclass
class _Protein:
    residues: np.ndarray
    composition: np.ndarray
    edges: np.ndarray | None  # [2, E] from a structure or a supplied map; None: sequence band


@dataclass
class _Compound:
    graph: MolGraph
    fingerprint: np.ndarray


@dataclass
class _Record:
    protein: int
    compound: int
    target: float
    contacts: np.ndarray | None
    source: str


def band_edges(length: int, width: int) -> np.ndarray:
    """Edges (both directions and self loops) between residues at most `width` apart in sequence, [2, E]."""
    idx = np.arange(length)
    src, dst = [], []
    for off in range(-width, width + 1):
        ok = (idx + off >= 0) & (idx + off < length)
        src.append(idx[ok] + off)
        dst.append(idx[ok])
    return np.stack([np.concatenate(src), np.concatenate(dst)]).astype(np.int64)


def contact_edges(cmap: np.ndarray) -> np.ndarray:
    """Edges of a residue contact map (nonzero entries, made symmetric, self loops added), [2, E]."""
    m = (np.asarray(cmap) > 0) | (np.asarray(cmap).T > 0)
    np.fill_diagonal(m, True)
    src, dst = np.nonzero(m)
    return np.stack([src, dst]).astype(np.int64)


def ca_contact_map(structure: Path, chain: str | None, length: int, cutoff: float) -> np.ndarray:
    """C-alpha contact map (distance < cutoff) of one chain of a PDB/mmCIF file, checked against `length`."""
    import gemmi

    try:
        st = gemmi.read_structure(str(structure))
    except Exception as exc:
        raise DataError(structure, f"cannot read structure: {str(exc).splitlines()[0]}") from None
    model = st[0]
    chains = [c for c in model if chain is None or c.name == chain]
    if not chains:
        raise DataError(structure, f"chain {chain!r} not found")
    coords = []
    for res in chains[0]:
        ca = res.find_atom("CA", "*")
        if ca is not None and gemmi.find_tabulated_residue(res.name) is not None:
            if gemmi.find_tabulated_residue(res.name).is_amino_acid():
                coords.append([ca.pos.x, ca.pos.y, ca.pos.z])
    xyz = np.asarray(coords, dtype=np.float32).reshape(-1, 3)
    if len(xyz) != length:
        raise DataError(
            structure, f"chain {chains[0].name} has {len(xyz)} C-alpha residues, sequence has {length}"
        )
    d = np.sqrt(((xyz[:, None, :] - xyz[None, :, :]) ** 2).sum(-1))
    return (d < cutoff).astype(np.uint8)


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
        split: Literal["given", "random", "unseen_protein", "unseen_compound", "all"] = "given",
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
        self._proteins: list[_Protein] = []
        self._protein_ids: dict[str, int] = {}
        self._compounds: list[_Compound] = []
        self._compound_ids: dict[str, int] = {}
        self.sets: dict[str, list[_Record]] = {}
        self.skipped: dict[str, int] = {}
        self._ready = False

    # ---------------------------------------------------------------- reading
    def _protein(self, seq: str, source: Path, where: str, row: dict[str, str]) -> int:
        if seq in self._protein_ids and not row.get("structure") and not row.get("protein_contacts"):
            return self._protein_ids[seq]
        if not seq:
            raise DataError(source, f"{where}: empty protein sequence")
        bad = invalid_residue(seq)
        if bad is not None:
            raise DataError(source, f"{where}: residue {bad!r} is not an amino acid")
        edges = None
        if row.get("protein_contacts"):
            cpath = source.parent / row["protein_contacts"]
            cmap = self._load_npy(cpath, source, where)
            if cmap.shape != (len(seq), len(seq)):
                raise DataError(
                    cpath, f"{where}: protein contact map shape {cmap.shape}, expected {(len(seq), len(seq))}"
                )
            edges = contact_edges(cmap)
        elif row.get("structure"):
            cmap = ca_contact_map(
                source.parent / row["structure"], row.get("chain") or None, len(seq), self.contact_cutoff
            )
            edges = contact_edges(cmap)
        if seq in self._protein_ids and edges is None:
            return self._protein_ids[seq]
        if seq in self._protein_ids:  # first structure seen for this sequence wins
            pid = self._protein_ids[seq]
            if self._proteins[pid].edges is None:
                self._proteins[pid].edges = edges
            return pid
        self._protein_ids[seq] = len(self._proteins)
        self._proteins.append(_Protein(encode_protein(seq), protein_composition(seq), edges))
        return self._protein_ids[seq]

    def _compound(self, smiles: str) -> int:
        if smiles not in self._compound_ids:
            graph = featurize_smiles(smiles, lenient=self.lenient_sanitize)
            fp = morgan_fingerprint(
                smiles, self.fingerprint_radius, self.fingerprint_bits, lenient=self.lenient_sanitize
            )
            self._compound_ids[smiles] = len(self._compounds)
            self._compounds.append(_Compound(graph, fp))
        return self._compound_ids[smiles]

    @staticmethod
    def _load_npy(path: Path, source: Path, where: str) -> np.ndarray:
        if not path.is_file():
            raise DataError(source, f"{where}: contact map {path} not found")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DataError(path, f"cannot read .npy: {str(exc).splitlines()[0]}") from None
        if arr.ndim != 2:
            raise DataError(path, f"contact map must be 2-D, got shape {arr.shape}")
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise DataError(path, "contact map has NaN or infinite values")
        return arr

    def _contacts(self, cpath: Path, source: Path, where: str, pid: int, cid: int) -> np.ndarray:
        arr = self._load_npy(cpath, source, where)
        n_res = len(self._proteins[pid].residues)
        graph = self._compounds[cid].graph
        if arr.shape == (n_res, graph.n_atoms):
            return arr
        if arr.shape == (n_res, graph.n_explicit_atoms):
            return arr[:, graph.heavy_index]
        raise DataError(  # the TSV's line and the map's file: both are needed to find the record
            source,
            f"{where}: contact map {cpath} has shape {arr.shape}, expected ({n_res}, {graph.n_atoms})"
            " residues x heavy atoms"
            f" (or ({n_res}, {graph.n_explicit_atoms}) with explicit hydrogens)",
        )

    def _add(
        self, source: Path, where: str, row: dict[str, str], seq: str, smiles: str, target: Any
    ) -> _Record | None:
        try:
            y = float(target)
        except (TypeError, ValueError):
            raise DataError(source, f"{where}: affinity {target!r} is not a number") from None
        if not math.isfinite(y):
            raise DataError(source, f"{where}: affinity {target!r} is not finite")
        try:
            cid = self._compound(smiles)
        except SmilesError as exc:
            if self.skip_invalid:
                self.skipped[str(source)] = self.skipped.get(str(source), 0) + 1
                return None
            raise DataError(source, f"{where}: {exc}") from None
        try:
            pid = self._protein(seq, source, where, row)
        except DataError:
            if self.skip_invalid and invalid_residue(seq) is not None:
                self.skipped[str(source)] = self.skipped.get(str(source), 0) + 1
                return None
            raise
        contacts = None
        if row.get("contacts"):
            contacts = self._contacts(source.parent / row["contacts"], source, where, pid, cid)
        return _Record(pid, cid, y, contacts, f"{source.stem}:{where.split()[-1]}")

    def _read_tsv(self, file: Path) -> list[_Record]:
        if not file.is_file():
            raise DataError(file, "file not found")
        with open(file, newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            cols = reader.fieldnames or []
            seq_col = "protein_sequence" if "protein_sequence" in cols else "sequence"
            target_col = self.target_column or next((c for c in TARGET_COLUMNS if c in cols), "pKd")
            for need in ("smiles", seq_col, target_col):
                if need not in cols:
                    raise DataError(file, f"missing column {need!r} (columns: {', '.join(cols)})")
            records = []
            for lineno, row in enumerate(reader, start=2):
                rec = self._add(
                    file,
                    f"line {lineno}",
                    row,
                    (row[seq_col] or "").strip(),
                    (row["smiles"] or "").strip(),
                    row[target_col],
                )
                if rec is not None:
                    records.append(rec)
        return records

    def _read_json(self, file: Path) -> list[_Record]:
        try:
            items = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(file, f"cannot read JSON: {exc}") from None
        if not isinstance(items, list):
            raise DataError(file, "expected a JSON list of complexes")
        records = []
        for i, item in enumerate(items):
            key = item.get("pdb", str(i))
            where = f"complex {key}"
            target_key = self.target_column or next((c for c in TARGET_COLUMNS if c in item), None)
            for need in ("smiles", "sequence"):
                if need not in item:
                    raise DataError(file, f"{where}: missing key {need!r}")
            if target_key is None or target_key not in item:
                raise DataError(file, f"{where}: missing affinity key (one of {', '.join(TARGET_COLUMNS)})")
            row = {
                k: str(v)
                for k, v in item.items()
                if k in ("structure", "chain", "protein_contacts", "contacts")
            }
            if "contacts" not in row and (file.parent / f"{key}_contacts.npy").is_file():
                row["contacts"] = f"{key}_contacts.npy"
            rec = self._add(
                file, where, row, item["sequence"].strip(), item["smiles"].strip(), item[target_key]
            )
            if rec is not None:
                rec.source = f"{file.stem}:{key}"
                records.append(rec)
        return records

    def _read(self, file: Path) -> list[_Record]:
        return self._read_json(file) if file.suffix == ".json" else self._read_tsv(file)

    # ---------------------------------------------------------------- splits
    def _carve(self, records: list[_Record], fraction: float, by: str, rng: np.random.Generator):
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

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        rng = np.random.default_rng(self.seed)
        if self.path.is_dir():
            train_file = self.path / self.train_name
            test_file = self.path / self.test_name if self.test_name else None
        else:
            train_file, test_file = self.path, None
        pool = self._read(train_file)
        if not pool:
            raise DataError(train_file, "no usable records")
        sets: dict[str, list[_Record]] = {}
        extra: dict[str, list[_Record]] = {}
        if self.split == "all":
            sets = {"train": pool, "val": pool, "test": pool}
        elif self.split == "given":
            if test_file is None:
                raise DataError(self.path, "split 'given' needs a test file (test_name)")
            train, val = self._carve(pool, self.val_fraction, "random", rng)
            sets = {"train": train, "val": val, "test": self._read(test_file)}
        else:
            rest, test = self._carve(pool, self.test_fraction, self.split, rng)
            train, val = self._carve(
                rest, self.val_fraction / max(1e-9, 1 - self.test_fraction), self.split, rng
            )
            sets = {"train": train, "val": val, "test": test}
            if test_file is not None:
                extra[test_file.stem] = self._read(test_file)
        for name in self.extra_test_names:
            file = self.path / name if self.path.is_dir() else self.path.parent / name
            extra[Path(name).stem] = self._read(file)
        if self.max_train_samples is not None and len(sets["train"]) > self.max_train_samples:
            keep = np.sort(rng.choice(len(sets["train"]), self.max_train_samples, replace=False))
            sets["train"] = [sets["train"][i] for i in keep]
        for name, recs in sets.items():
            if not recs:
                raise DataError(self.path, f"the {name} split is empty")
        sets.update(extra)
        self.sets = sets
        self._train_proteins = {r.protein for r in sets["train"]}
        self._train_compounds = {r.compound for r in sets["train"]}
        for src, n in self.skipped.items():
            log.warning("%s: skipped %d records with invalid SMILES or sequence", src, n)
        log.info("affinity data: %s", {k: len(v) for k, v in sets.items()})
        self._ready = True

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
    def collate(self, records: list[_Record], subset: str, indices: list[int] | None = None) -> AffinityBatch:
        """Pad a list of records into an AffinityBatch (proteins deduplicated, padding masked)."""
        pids = list(dict.fromkeys(r.protein for r in records))
        prow = {p: i for i, p in enumerate(pids)}
        prots = [self._proteins[p] for p in pids]
        n_res = max(len(p.residues) for p in prots)
        residues = torch.zeros(len(prots), n_res, dtype=torch.long)
        edges = []
        for i, p in enumerate(prots):
            residues[i, : len(p.residues)] = torch.from_numpy(p.residues)
            e = p.edges if p.edges is not None else band_edges(len(p.residues), self.band_width)
            edges.append(torch.from_numpy(e) + i * n_res)
        comps = [self._compounds[r.compound] for r in records]
        n_atoms = max(c.graph.n_atoms for c in comps)
        bsz = len(records)
        atom_x = torch.zeros(bsz, n_atoms, ATOM_DIM)
        atom_mask = torch.zeros(bsz, n_atoms, dtype=torch.bool)
        atom_adj = torch.zeros(bsz, n_atoms, n_atoms)
        contacts = torch.zeros(bsz, n_res, n_atoms)
        has_contacts = torch.zeros(bsz, dtype=torch.bool)
        for b, (rec, comp) in enumerate(zip(records, comps, strict=True)):
            g = comp.graph
            atom_x[b, : g.n_atoms] = torch.from_numpy(g.x)
            atom_mask[b, : g.n_atoms] = True
            if len(g.edges):
                e = torch.from_numpy(g.edges)
                atom_adj[b, e[:, 0], e[:, 1]] = 1.0
                atom_adj[b, e[:, 1], e[:, 0]] = 1.0
            if rec.contacts is not None:
                c = torch.from_numpy(rec.contacts)
                contacts[b, : c.shape[0], : c.shape[1]] = c
                has_contacts[b] = True
        return AffinityBatch(
            residues=residues,
            protein_mask=residues > 0,
            protein_edges=torch.cat(edges, dim=1),
            protein_of=torch.tensor([prow[r.protein] for r in records], dtype=torch.long),
            atom_x=atom_x,
            atom_mask=atom_mask,
            atom_adj=atom_adj,
            affinity=torch.tensor([r.target for r in records], dtype=torch.float32),
            contacts=contacts,
            has_contacts=has_contacts,
            fingerprint=torch.from_numpy(np.stack([c.fingerprint for c in comps])).float(),
            composition=torch.from_numpy(np.stack([self._proteins[r.protein].composition for r in records])),
            unseen_protein=torch.tensor([r.protein not in self._train_proteins for r in records]),
            unseen_compound=torch.tensor([r.compound not in self._train_compounds for r in records]),
            index=torch.tensor(indices if indices is not None else list(range(bsz)), dtype=torch.long),
            subset=subset,
        )

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

    def _all_records(self) -> list[_Record]:
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
