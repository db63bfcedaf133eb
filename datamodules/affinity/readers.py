"""Affinity pair files (TSV tables, PDBbind-style JSON lists) read into pair records, each unique protein and
compound featurized once; bad records are one-line DataErrors naming the file and the line or complex."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from plexlab.datamodules.affinity.contacts import ca_contact_map, contact_edges, load_contact_map
from plexlab.datamodules.affinity.molecule import (
    SmilesError,
    encode_protein,
    featurize_smiles,
    invalid_residue,
    morgan_fingerprint,
    protein_composition,
)
from plexlab.datamodules.affinity.records import CompoundEntry, PairRecord, ProteinEntry
from plexlab.datamodules.errors import DataError

TARGET_COLUMNS = ("pKd", "pK", "affinity", "y")
# JSON keys copied into a record's row, read the same way as the TSV's optional columns.
_JSON_OPTIONAL = ("structure", "chain", "protein_contacts", "contacts")


class PairReader:
    """Reads pair files into `PairRecord`s that index its `proteins` and `compounds` tables.

    Args:
        target_column: the affinity column or key; None: the first of TARGET_COLUMNS present.
        skip_invalid: skip (and count in `skipped`, per file) pairs with an invalid SMILES or residue.
        lenient_sanitize: let RDKit accept molecules that fail its full sanitization.
        contact_cutoff: C-alpha distance (Angstrom) below which residues of a structure are in contact.
        fingerprint_bits: length of the Morgan fingerprint.
        fingerprint_radius: radius of the Morgan fingerprint.
    """

    def __init__(
        self,
        target_column: str | None,
        skip_invalid: bool,
        lenient_sanitize: bool,
        contact_cutoff: float,
        fingerprint_bits: int,
        fingerprint_radius: int,
    ) -> None:
        self.target_column = target_column
        self.skip_invalid = skip_invalid
        self.lenient_sanitize = lenient_sanitize
        self.contact_cutoff = contact_cutoff
        self.fingerprint_bits = fingerprint_bits
        self.fingerprint_radius = fingerprint_radius
        self.proteins: list[ProteinEntry] = []
        self.compounds: list[CompoundEntry] = []
        self.skipped: dict[str, int] = {}
        self._protein_ids: dict[str, int] = {}
        self._compound_ids: dict[str, int] = {}

    def read(self, file: Path) -> list[PairRecord]:
        """The usable records of a .json list of complexes or a TSV table."""
        return self._read_json(file) if file.suffix == ".json" else self._read_tsv(file)

    # ---------------------------------------------------------------- files
    def _read_tsv(self, file: Path) -> list[PairRecord]:
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

    def _read_json(self, file: Path) -> list[PairRecord]:
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
            row = {k: str(v) for k, v in item.items() if k in _JSON_OPTIONAL}
            if "contacts" not in row and (file.parent / f"{key}_contacts.npy").is_file():
                row["contacts"] = f"{key}_contacts.npy"
            rec = self._add(
                file, where, row, item["sequence"].strip(), item["smiles"].strip(), item[target_key]
            )
            if rec is not None:
                rec.source = f"{file.stem}:{key}"
                records.append(rec)
        return records

    # ---------------------------------------------------------------- records
    def _add(
        self, source: Path, where: str, row: dict[str, str], seq: str, smiles: str, target: Any
    ) -> PairRecord | None:
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
        return PairRecord(pid, cid, y, contacts, f"{source.stem}:{where.split()[-1]}")

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
            cmap = load_contact_map(cpath, source, where)
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
            if self.proteins[pid].edges is None:
                self.proteins[pid].edges = edges
            return pid
        self._protein_ids[seq] = len(self.proteins)
        self.proteins.append(ProteinEntry(encode_protein(seq), protein_composition(seq), edges))
        return self._protein_ids[seq]

    def _compound(self, smiles: str) -> int:
        if smiles not in self._compound_ids:
            graph = featurize_smiles(smiles, lenient=self.lenient_sanitize)
            fp = morgan_fingerprint(
                smiles, self.fingerprint_radius, self.fingerprint_bits, lenient=self.lenient_sanitize
            )
            self._compound_ids[smiles] = len(self.compounds)
            self.compounds.append(CompoundEntry(graph, fp))
        return self._compound_ids[smiles]

    def _contacts(self, cpath: Path, source: Path, where: str, pid: int, cid: int) -> np.ndarray:
        """Residues x heavy atoms; a map with one column per atom as written (with H) keeps the heavy ones."""
        arr = load_contact_map(cpath, source, where)
        n_res = len(self.proteins[pid].residues)
        graph = self.compounds[cid].graph
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
