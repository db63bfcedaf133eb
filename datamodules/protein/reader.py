"""Readers for protein data: PDB/mmCIF structures (gemmi), FASTA, SCOP2 + SIFTS families (labels: labels.py).

A structure file yields one `ChainRecord` per usable protein chain and one `ChainSkip` (a short reason
category and a one-line detail) per chain that cannot be used, so a folder of real-world files is ingested
without crashing. A file that cannot be read at all raises `DataError` naming the file.

Choices (where the task leaves room):
- Only the first model is read (NMR ensembles, trajectories); alternate locations keep the first conformer
  (gemmi's `remove_alternative_conformations`, which also resolves point microheterogeneity).
- The sequence of a chain is its entity sequence (mmCIF `entity_poly_seq`, PDB SEQRES) when the file has one,
  and the observed residues are placed on it with gemmi's `label_seq` (read from mmCIF; for PDB files gemmi
  aligns the residues to SEQRES). Without one, the sequence is the observed residues in file order
  (insertion codes are separate residues). An observed residue whose type disagrees with the entity sequence
  at its position is dropped from the structure (the sequence wins), and counted.
- Non-standard amino acids map to their parent (MSE -> M, SEP -> S, ...) from gemmi's residue table, or to X.
  HETATM records are kept when they are part of the polymer (MSE), otherwise ignored (ligands, waters).
- Nucleic-acid chains, chains without a polymer and chains with fewer than `min_residues` C-alpha atoms are
  skipped with a reason.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from plexlab.datamodules.errors import DataError, first_line
from plexlab.datamodules.protein.formats import (
    complete_atom_site,
    fill_blank_elements,
    read_bytes,
    sniff_format,
)

log = logging.getLogger(__name__)

STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"
# Letters the ESM alphabet knows: the 20 standard amino acids, X (unknown), and the ambiguity/rare codes.
SEQUENCE_ALPHABET = frozenset(STANDARD_AA + "XBZUO")
STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")
_PDB_ID = re.compile(r"^(?:pdb|mmcif_)?([0-9][a-z0-9]{3})(?![a-z0-9]{2})", re.IGNORECASE)


@dataclass
class ChainRecord:
    """One protein chain: its sequence and the C-alpha coordinates of the observed residues.

    `seq_index[i]` is the position in `sequence` of structure residue i (strictly increasing). `ca` is None
    for sequence-only records (FASTA).
    """

    id: str
    source: str
    pdb_id: str
    chain: str
    sequence: str
    seq_index: np.ndarray | None = None
    ca: np.ndarray | None = None
    seq_source: str = "structure"
    notes: list[str] = field(default_factory=list)

    @property
    def num_residues(self) -> int:
        return len(self.sequence) if self.ca is None else len(self.ca)


@dataclass(frozen=True)
class ChainSkip:
    """A chain that was not used: `reason` is a short category (for tables), `detail` one line."""

    source: str
    chain: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.source}: chain {self.chain!r}: {self.reason}: {self.detail}"


def is_structure_file(path: Path) -> bool:
    """Whether a path looks like a PDB/mmCIF file (gzipped or not)."""
    return path.is_file() and path.name.lower().endswith(STRUCTURE_SUFFIXES)


def residue_letter(name: str) -> str:
    """One-letter code of a residue name: standard letter, parent of a modified amino acid, or X."""
    import gemmi

    info = gemmi.find_tabulated_residue(name)
    if info is None or not info.is_amino_acid():
        return "X"
    code = info.one_letter_code
    if code.isupper() and code in SEQUENCE_ALPHABET:
        return code
    if code.islower() and code.upper() in STANDARD_AA:
        return code.upper()  # modified residue -> parent (gemmi writes the parent in lower case)
    return "X"


def guess_pdb_id(name: str, file_name: str) -> str:
    """The 4-character PDB id from the structure's header name, else from the file name, else ''."""
    for candidate in (name, Path(file_name).name):
        m = _PDB_ID.match(candidate)
        if m:
            return m.group(1).upper()
    return ""


def _load(path: Path):
    import gemmi

    data = read_bytes(path)
    fmt = sniff_format(path, data)
    text = data.decode("latin-1").removeprefix(
        "\u00ef\u00bb\u00bf"
    )  # a UTF-8 byte-order mark, read as latin-1
    if fmt == "pdb":
        lines = text.rstrip("\n").splitlines()
        last = lines[-1] if lines else ""
        prev = next((ln for ln in reversed(lines[:-1]) if ln.startswith(("ATOM", "HETATM"))), "")
        cut = len(last.rstrip()) < 54 or (not text.endswith("\n") and len(last) < len(prev.rstrip("\r")))
        if last.startswith(("ATOM", "HETATM")) and cut:
            # a coordinate record cut short: the file was truncated (gemmi would silently keep the rest)
            raise DataError(path, f"truncated: line {len(lines)} is an incomplete {last[:6].strip()} record")
        text = fill_blank_elements(text)
    try:
        if fmt == "mmcif":
            doc = gemmi.cif.read_string(text)
            block = doc.sole_block()
            complete_atom_site(path, block)
            st = gemmi.make_structure_from_block(block)
        else:
            st = gemmi.read_pdb_string(text)
    except DataError:
        raise
    except Exception as exc:  # gemmi raises RuntimeError/ValueError with a message naming the line
        raise DataError(path, f"cannot parse: {first_line(exc)}") from exc
    if len(st) == 0 or sum(len(ch) for ch in st[0]) == 0:
        raise DataError(path, "no atoms (empty or truncated structure)")
    n_models = len(st)
    while len(st) > 1:  # only the first model is used; dropping the rest early saves time on ensembles
        del st[len(st) - 1]
    _split_unnamed_by_segment(st)
    return st, n_models


def _split_unnamed_by_segment(st) -> None:
    """Simulation files (CHARMM, NAMD) leave the chain id blank and name segments instead: use those."""
    import gemmi

    model = st[0]
    for idx in reversed(range(len(model))):
        ch = model[idx]
        segments = list(dict.fromkeys(r.segment.strip() for r in ch))
        if ch.name.strip() or len(segments) < 2:
            continue
        parts = {seg: gemmi.Chain(seg or "_") for seg in segments}
        for res in ch:
            parts[res.segment.strip()].add_residue(res)
        del model[idx]
        for part in parts.values():
            model.add_chain(part)


def read_structure(
    path: str | Path, chains: list[str] | None = None, min_residues: int = 10
) -> tuple[list[ChainRecord], list[ChainSkip]]:
    """Read the protein chains of one PDB/mmCIF file (optionally only `chains`, by author chain id).

    Raises DataError when the file itself is unusable; returns skips for chains that are not.
    """
    import gemmi

    path = Path(path)
    st, n_models = _load(path)
    src = path.name
    st.remove_alternative_conformations()
    st.setup_entities()
    try:
        st.assign_label_seq_id(False)  # PDB files: align observed residues to SEQRES (no-op where set)
    except Exception as exc:  # alignment trouble must not lose the file: fall back to observed residues
        log.debug("%s: assign_label_seq_id failed: %s", path, exc)
    pdb_id = guess_pdb_id(st.name, path.name)
    model = st[0]

    records: list[ChainRecord] = []
    skips: list[ChainSkip] = []
    wanted = None if chains is None else set(chains)
    # Chain ids can repeat (a chain split by TER, a system written twice): use the first part with a polymer.
    parts: dict[str, list] = {}
    for ch in model:
        parts.setdefault(ch.name, []).append(ch)
    seen = set(parts)
    for name, group in parts.items():
        if wanted is not None and name not in wanted:
            continue
        polymer = next((p for p in (ch.get_polymer() for ch in group) if len(p) > 0), None)
        if polymer is not None and not any(_is_residue_of_polymer(r.name) for r in polymer):
            polymer = None  # ions or ligands that gemmi took for a polymer (files without entity records)
        if polymer is None:
            if wanted is not None:
                skips.append(ChainSkip(src, name, "no polymer", "only ligands/waters/ions"))
            continue
        ptype = polymer.check_polymer_type()
        if ptype in (gemmi.PolymerType.Dna, gemmi.PolymerType.Rna, gemmi.PolymerType.DnaRnaHybrid):
            kind = str(ptype).split(".")[-1]
            skips.append(ChainSkip(src, name, "nucleic acid", f"{kind} chain skipped"))
            continue
        if ptype not in (gemmi.PolymerType.PeptideL, gemmi.PolymerType.PeptideD, gemmi.PolymerType.Unknown):
            skips.append(ChainSkip(src, name, "not a protein", f"polymer type {ptype}"))
            continue
        rec = _chain_record(st, polymer, path, pdb_id, name, n_models)
        if isinstance(rec, ChainSkip):
            skips.append(rec)
        elif len(rec.ca) < min_residues:
            skips.append(
                ChainSkip(src, name, "too short", f"{len(rec.ca)} residues with C-alpha < {min_residues}")
            )
        else:
            records.append(rec)
    if wanted is None and not records:  # the file itself gave nothing: say why, once per file
        skips.append(ChainSkip(src, "*", "no protein chain", _why_no_protein(model, skips)))
    if wanted is not None:
        for name in sorted(wanted - seen):
            skips.append(
                ChainSkip(
                    src,
                    name,
                    "chain not found",
                    f"no chain {name!r} in the first model (chains: {', '.join(sorted(seen))})",
                )
            )
    return records, skips


def _why_no_protein(model, skips: list[ChainSkip]) -> str:
    """One line on what a file without a usable protein chain holds instead."""
    if skips:
        return "chains rejected: " + ", ".join(f"{s.chain} {s.reason}" for s in skips[:6])
    names = Counter(res.name for ch in model for res in ch)
    listed = ", ".join(f"{n} {name}" for name, n in names.most_common(4))
    more = f" and {len(names) - 4} other kinds" if len(names) > 4 else ""
    return f"only waters, ligands or ions ({listed}{more})"


def _is_residue_of_polymer(name: str) -> bool:
    import gemmi

    info = gemmi.find_tabulated_residue(name)
    return info is None or info.is_amino_acid() or info.is_nucleic_acid()


def _chain_record(st, polymer, path: Path, pdb_id: str, chain: str, n_models: int) -> ChainRecord | ChainSkip:
    import gemmi

    src = path.name
    entity = st.get_entity_of(polymer)
    full = list(entity.full_sequence) if entity is not None else []
    letters, ca, labels = [], [], []
    for res in polymer:
        atom = res.find_atom("CA", "*", gemmi.Element("C"))
        if atom is None:
            continue
        letters.append(residue_letter(res.name))
        ca.append(atom.pos.tolist())
        labels.append(res.label_seq)
    if not ca:
        return ChainSkip(src, chain, "no C-alpha", f"{len(polymer)} residues but no C-alpha atom")
    coords = np.asarray(ca, dtype=np.float32)
    if not np.isfinite(coords).all():
        return ChainSkip(src, chain, "bad coordinates", "non-finite C-alpha coordinates")
    notes = [f"{n_models} models, first used"] if n_models > 1 else []
    rid = f"{src}:{chain}"
    if full and all(lab is not None for lab in labels):
        seq = "".join(residue_letter(gemmi.Entity.first_mon(name)) for name in full)
        idx = np.asarray(labels, dtype=np.int64) - 1
        ok = (idx >= 0) & (idx < len(seq))
        ok[ok] &= np.fromiter(
            (seq[i] == a for i, a in zip(idx[ok], np.asarray(letters)[ok], strict=True)), bool
        )
        mono = np.concatenate([[True], np.diff(idx) > 0])
        ok &= mono
        if ok.sum() >= 0.5 * len(idx):
            if (~ok).any():
                notes.append(f"{int((~ok).sum())} residues disagree with the entity sequence, dropped")
            missing = len(seq) - int(ok.sum())
            if missing:
                notes.append(f"{missing} residues of the sequence not observed")
            return ChainRecord(rid, str(path), pdb_id, chain, seq, idx[ok], coords[ok], "entity", notes)
        notes.append("entity sequence does not match the structure; observed residues used")
    seq = "".join(letters)
    return ChainRecord(
        rid, str(path), pdb_id, chain, seq, np.arange(len(seq), dtype=np.int64), coords, "structure", notes
    )


def validate_sequence(source: str | Path, record: str, seq: str) -> str:
    """Upper-case and check a sequence against the ESM alphabet; DataError names the record and letter."""
    seq = seq.strip().upper().removesuffix("*")
    if not seq:
        raise DataError(source, f"record {record!r}: empty sequence")
    for i, a in enumerate(seq):
        if a not in SEQUENCE_ALPHABET:
            raise DataError(
                source, f"record {record!r}: residue {a!r} at position {i + 1} is not an amino acid"
            )
    return seq


def read_fasta(path: str | Path) -> list[ChainRecord]:
    """Read a FASTA file (gzipped or not) into sequence-only records; ids: first word of each header."""
    path = Path(path)
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt") as fh:
            lines = fh.read().splitlines()
    except (OSError, EOFError) as exc:
        raise DataError(path, f"cannot read: {exc}") from exc
    records: list[ChainRecord] = []
    name, chunks, seen = None, [], set()

    def flush() -> None:
        if name is None:
            return
        seq = validate_sequence(path, name, "".join(chunks))
        records.append(ChainRecord(name, str(path), "", "", seq, seq_source="fasta"))

    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            flush()
            name = line[1:].split()[0] if line[1:].split() else f"record{len(records) + 1}"
            if name in seen:
                raise DataError(path, f"line {lineno}: duplicate record id {name!r}")
            seen.add(name)
            chunks = []
        elif name is None:
            raise DataError(path, f"line {lineno}: sequence before the first '>' header")
        else:
            chunks.append(line.replace(" ", ""))
    flush()
    if not records:
        raise DataError(path, "no FASTA records")
    return records


class Scop2Index:
    """SCOP2 family and superfamily labels of PDB chains, through the SIFTS chain-to-domain mapping.

    A chain with several domains has several labels; a chain SIFTS does not map has none.
    """

    def __init__(self, scop2_dir: str | Path) -> None:
        d = Path(scop2_dir)
        cla, sifts, des = (
            d / "scop-cla-latest.txt",
            d / "pdb_chain_scop2_uniprot.csv",
            d / "scop-des-latest.txt",
        )
        for p in (cla, sifts):
            if not p.is_file():
                raise DataError(p, "missing SCOP2/SIFTS file")
        fa_of: dict[str, str] = {}
        sf_of: dict[str, str] = {}
        with open(cla) as fh:
            for lineno, line in enumerate(fh, 1):
                if line.startswith("#") or not line.strip():
                    continue
                parts = line.split()
                if len(parts) < 11:
                    raise DataError(cla, f"line {lineno}: expected 11 fields, got {len(parts)}")
                tags = dict(kv.split("=", 1) for kv in parts[10].split(","))
                fa_of[parts[0]] = tags.get("FA", "")
                sf_of[parts[5]] = tags.get("SF", "")
        self.names: dict[str, str] = {}
        if des.is_file():
            with open(des) as fh:
                for line in fh:
                    if not line.startswith("#") and line.strip():
                        node, _, name = line.rstrip("\n").partition(" ")
                        self.names[node] = name
        self._family: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._superfamily: dict[tuple[str, str], set[str]] = defaultdict(set)
        with open(sifts) as fh:
            rows = (ln for ln in fh if not ln.startswith("#"))
            for row in csv.DictReader(rows):
                key = (row["PDB"].upper(), row["CHAIN"])
                if fa := fa_of.get(row["FA_DOMID"]):
                    self._family[key].add(fa)
                if sf := sf_of.get(row["SF_DOMID"]):
                    self._superfamily[key].add(sf)

    def family(self, pdb_id: str, chain: str) -> list[str]:
        return sorted(self._family.get((pdb_id.upper(), chain), ()))

    def superfamily(self, pdb_id: str, chain: str) -> list[str]:
        return sorted(self._superfamily.get((pdb_id.upper(), chain), ()))
