"""Function labels of protein chains: DeepFRI's EC and GO annotation files, and plain label TSVs.

DeepFRI's annotation files (`nrPDB-EC_*_annot.tsv`, `nrPDB-GO_*_annot.tsv`) open with `###` sections, each a
header line and one tab-separated line: the term list of an ontology (`### EC-numbers`, `### GO-terms
(molecular_function)`, ...) or its term names (`### GO-names (...)`). The last `###` line names the columns
(`### PDB-chain<TAB>EC-numbers`, or the three GO ontologies), and each row after it is a chain (`1ABC-A`) with
a comma-separated term list per column. The columns become separate label sets, `ec`, `go_mf`, `go_bp` and
`go_cc`, each with the file's term list as its vocabulary (the benchmark's label space).

Any other TSV has a header row, one row per chain keyed by `file` + `chain`, `pdb` + `chain`, or a first
column like `1ABC-A`, and multi-valued cells (`a,b; c`) in the other columns (`ec`, `family`, ...).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from plexlab.datamodules.errors import DataError

# DeepFRI's column headers -> label column names (data.label_column)
DEEPFRI_COLUMNS = {
    "EC-numbers": "ec",
    "GO-terms (molecular_function)": "go_mf",
    "GO-terms (biological_process)": "go_bp",
    "GO-terms (cellular_component)": "go_cc",
}

LabelKey = tuple[str, str]


@dataclass
class LabelTable:
    """Labels of chains as read from one file.

    rows: {key: {column: [labels]}}; key: (file name, chain) when `keying` is "file", else (PDB id, chain).
    keying: "file", "pdb" or "id" (a first column like `1ABC-A`, as in DeepFRI's files).
    vocabularies: the label space a file declares per column (DeepFRI's term lists); empty for plain TSVs.
    """

    rows: dict[LabelKey, dict[str, list[str]]]
    keying: str
    vocabularies: dict[str, list[str]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        """Label columns present in the file."""
        if self.vocabularies:
            return list(self.vocabularies)
        return sorted({c for row in self.rows.values() for c in row})


def split_labels(value: str) -> list[str]:
    """Multi-valued label cell: 'a,b; c' -> ['a', 'b', 'c'] (empty and '-' cells give [])."""
    parts = re.split(r"[,;\s]+", value.strip())
    return [p for p in parts if p and p not in {"-", "NA", "nan"}]


def chain_key(path: Path, where: str, value: str) -> LabelKey:
    """'1abc-A' -> ('1ABC', 'A'); DataError naming the file and row when there is no '-'."""
    pdb, dash, chain = value.strip().partition("-")
    if not dash or not pdb or not chain:
        raise DataError(path, f"{where}: key {value!r} is not PDB-CHAIN (e.g. 1ABC-A)")
    return pdb.upper(), chain


def read_label_table(path: str | Path) -> LabelTable:
    """Read a DeepFRI annotation file or a plain labels TSV (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read: {exc}") from exc
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first.startswith("###"):
        return _read_deepfri(path, lines)
    return _read_tsv(path, lines)


def read_labels(path: str | Path) -> tuple[dict[LabelKey, dict[str, list[str]]], str]:
    """The rows of `read_label_table` and how they are keyed ("file", "pdb" or "id")."""
    table = read_label_table(path)
    return table.rows, table.keying


def _read_deepfri(path: Path, lines: list[str]) -> LabelTable:
    headers = [i for i, ln in enumerate(lines) if ln.startswith("###")]
    vocab_of: dict[str, list[str]] = {}
    for i in headers[:-1]:  # every section but the last is a header line and one list line
        name = lines[i].lstrip("#").strip()
        if i + 1 >= len(lines) or lines[i + 1].startswith("###"):
            raise DataError(path, f"line {i + 1}: section {name!r} has no term line after it")
        vocab_of[name] = [t.strip() for t in lines[i + 1].split("\t") if t.strip()]
    at = headers[-1]
    head = [c.strip() for c in lines[at].lstrip("#").split("\t")]
    columns: list[str] = []
    for name in head[1:]:
        if name not in DEEPFRI_COLUMNS:
            known = ", ".join(repr(k) for k in DEEPFRI_COLUMNS)
            raise DataError(path, f"line {at + 1}: unknown column {name!r} (DeepFRI columns: {known})")
        if name not in vocab_of:
            raise DataError(path, f"line {at + 1}: column {name!r} has no '### {name}' term list above it")
        columns.append(DEEPFRI_COLUMNS[name])
    if not columns:
        raise DataError(path, f"line {at + 1}: no label column after {head[0]!r}")
    vocabularies = {DEEPFRI_COLUMNS[n]: vocab_of[n] for n in head[1:]}
    known_terms = {col: set(v) for col, v in vocabularies.items()}
    rows: dict[LabelKey, dict[str, list[str]]] = {}
    for lineno, line in enumerate(lines[at + 1 :], at + 2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(head):
            raise DataError(path, f"line {lineno}: {len(cells)} fields, the header has {len(head)}")
        key = chain_key(path, f"line {lineno}", cells[0])
        if key in rows:
            raise DataError(path, f"line {lineno}: chain {cells[0].strip()!r} is listed twice")
        row: dict[str, list[str]] = {}
        for col, cell in zip(columns, cells[1:], strict=True):
            terms = [t.strip() for t in cell.split(",") if t.strip()]
            unknown = [t for t in terms if t not in known_terms[col]]
            if unknown:
                raise DataError(
                    path,
                    f"line {lineno}: {col} term {unknown[0]!r} of {cells[0].strip()} is not in the term list",
                )
            row[col] = terms
        rows[key] = row
    return LabelTable(rows, "id", vocabularies)


def _read_tsv(path: Path, lines: list[str]) -> LabelTable:
    body = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
    if not body:
        raise DataError(path, "no header row")
    reader = csv.DictReader(body, delimiter="\t")
    cols = [c.strip() for c in (reader.fieldnames or [])]
    if "file" in cols and "chain" in cols:
        keying = "file"
    elif "pdb" in cols and "chain" in cols:
        keying = "pdb"
    else:
        keying = "id"
    rows: dict[LabelKey, dict[str, list[str]]] = {}
    for lineno, row in enumerate(reader, 2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if keying == "file":
            key = (Path(row["file"]).name, row["chain"])
        elif keying == "pdb":
            key = (row["pdb"].upper(), row["chain"])
        else:
            key = chain_key(path, f"row {lineno} (no file/pdb+chain columns)", row[cols[0]])
        rows[key] = {k: split_labels(v) for k, v in row.items() if k not in {"file", "pdb", "chain", cols[0]}}
    return LabelTable(rows, keying)
