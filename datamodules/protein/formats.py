"""What a structure file is, from its bytes: compression, PDB or mmCIF, or which other kind of file.

- Compression is read from the content (gzip magic), not the name: a `.pdb.gz` that is plain text and a
  `.pdb` that is gzipped both load.
- The format is detected from the first lines: mmCIF when a `data_` block (or a `loop_`/`_atom_site.` item)
  comes first, PDB when lines start with PDB record names (ATOM, HETATM, HEADER, REMARK, ...). The content
  wins over the extension: PDB text under a `.cif` name reads as PDB.
- Anything else is named for what it looks like (zip archive, bzip2, UTF-16 text, XML, GROMACS .gro, ...),
  so a wrong file is not reported as an empty structure.
- Simulation packages (CHARMM, NAMD) write PDB files with a blank element column. gemmi then takes the
  element from the first two letters of the atom name, which makes a left-aligned `CA  ` calcium.
  `fill_blank_elements` writes the element before gemmi reads the file, residue-aware: in an amino acid or
  nucleotide the element is the first letter of the atom name (SE in MSE/SEC is selenium); an atom named
  like its residue (CA in CA, ZN in ZN) is that ion; other atoms keep gemmi's own guess. gemmi 0.7's Python
  API has no residue-aware element assignment, so this is done on the text.
"""

from __future__ import annotations

import gzip
import re
import zlib
from functools import lru_cache
from pathlib import Path

from plexlab.datamodules.errors import DataError

SNIFF_BYTES = 1 << 14  # the head that decides the format (hashing-cheap: read on every cache lookup)
# Record names of the PDB format (v3.3), the first six columns of a line, right-stripped.
PDB_RECORDS = frozenset(
    "HEADER OBSLTE TITLE SPLIT CAVEAT COMPND SOURCE KEYWDS EXPDTA NUMMDL MDLTYP AUTHOR REVDAT SPRSDE JRNL "
    "REMARK DBREF DBREF1 DBREF2 SEQADV SEQRES MODRES HET HETNAM HETSYN FORMUL HELIX SHEET SSBOND LINK "
    "CISPEP SITE CRYST1 ORIGX1 ORIGX2 ORIGX3 SCALE1 SCALE2 SCALE3 MTRIX1 MTRIX2 MTRIX3 MODEL ATOM ANISOU "
    "TER HETATM ENDMDL CONECT MASTER END SIGATM SIGUIJ USER".split()  # USER: MolProbity/reduce headers
)
_MAGIC = (
    (b"PK\x03\x04", "a zip archive"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"BZh", "bzip2-compressed data"),
    (b"\xfd7zXZ\x00", "xz-compressed data"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x93NUMPY", "a NumPy .npy array"),
)
# A GROMACS .gro atom line: residue number+name, atom name, atom number, x y z in nm with 3 decimals.
_GRO_ATOM = re.compile(r"^[ \d]{5}.{10}[ \d]{5}\s*-?\d+\.\d{3}\s*-?\d+\.\d{3}\s*-?\d+\.\d{3}")
# ATOM/HETATM lines whose element columns (77-78) are blank or missing and whose atom name starts in column
# 13: only there can gemmi's guess (columns 13-14) differ from the residue-aware one (" CA " is carbon).
# Matched from the newline before the record: a literal start is 7x faster to scan for than `^` with re.M.
_BLANK_ELEMENT = re.compile(
    r"\n(?:ATOM  |HETATM)[^\n]{6}[^ \n]"
    r"(?:[^\n]{0,63}+$|[^\n]{63}[^A-Za-z\n](?:\r?$|[^A-Za-z\n]))",  # possessive: no backtracking
    re.M,
)


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic; DataError when unreadable or empty."""
    try:
        data = path.read_bytes()
        if data.startswith(b"\x1f\x8b"):
            data = gzip.decompress(data)  # whole: a truncated gzip gives a clear error
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(path, f"cannot read: {exc}") from exc
    if not data.strip():
        raise DataError(path, "empty file")
    return data


def head_bytes(path: Path) -> bytes:
    """The first `SNIFF_BYTES` of the (gunzipped) content, cheaply: what `sniff_format` needs."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        if magic == b"\x1f\x8b":
            with gzip.open(path, "rb") as fh:
                return fh.read(SNIFF_BYTES)
        with open(path, "rb") as fh:
            return fh.read(SNIFF_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(path, f"cannot read: {exc}") from exc


def sniff_format(path: Path, data: bytes) -> str:
    """'pdb' or 'mmcif' from the content; DataError naming what the file looks like otherwise."""
    head = data[:SNIFF_BYTES]
    if not head.strip():
        raise DataError(path, "empty file")
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            raise _not_a_structure(path, f"looks like {kind}")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_utf16(head):
        raise _not_a_structure(path, "looks like UTF-16 text; save it as ASCII/UTF-8")
    if head.startswith(b"\x1f\x8b"):
        raise _not_a_structure(path, "looks gzip-compressed twice")
    if b"\x00" in head:
        raise _not_a_structure(path, "looks like binary data")
    text = head.decode("latin-1").removeprefix("\u00ef\u00bb\u00bf")
    lines = [ln for ln in text.splitlines()[:400] if ln.strip()]
    if len(data) > SNIFF_BYTES and lines:
        lines = lines[:-1]  # the last line of the head may be cut
    first = lines[0].lstrip() if lines else ""
    body = [ln for ln in lines if not ln.startswith("#")]
    if body and (body[0].startswith("data_") or body[0].startswith(("loop_", "_atom_site."))):
        return "mmcif"
    if any(ln[:6].rstrip().upper() in PDB_RECORDS for ln in lines):
        return "pdb"
    raise _not_a_structure(path, _other_kind(first, lines))


def structure_format(path: Path) -> str:
    """`sniff_format` of a file from its head only (what the cache key needs)."""
    return sniff_format(path, head_bytes(path))


def _looks_utf16(head: bytes) -> bool:
    """UTF-16 without a byte-order mark: every other byte of ASCII text is NUL."""
    sample = head[:512]
    return len(sample) >= 8 and (
        sample[1::2].count(0) > 0.9 * len(sample[1::2]) or sample[::2].count(0) > 0.9 * len(sample[::2])
    )


def _other_kind(first: str, lines: list[str]) -> str:
    low = first.lower()
    if low.startswith("<"):
        if "<html" in " ".join(lines[:5]).lower() or low.startswith("<!doctype html"):
            return "looks like an HTML page"
        if any("<!element" in ln.lower() or "<!entity" in ln.lower() for ln in lines[:50]):
            return "looks like an XML DTD"
        return "looks like XML; PDBML is not read"
    if low.startswith(("{", "[")):
        return "looks like JSON; mmJSON is not read"
    if any(ln.startswith("@<TRIPOS>") for ln in lines):
        return "looks like a Tripos MOL2 file"
    if any(ln.startswith(("M  END", "$$$$")) or "V2000" in ln or "V3000" in ln for ln in lines):
        return "looks like an MDL mol/SDF file"
    if first.startswith(">"):
        return "looks like a FASTA file; give it as fasta_file"
    if len(lines) >= 3 and lines[1].strip().isdigit() and _GRO_ATOM.match(lines[2]):
        return "looks like a GROMACS .gro file; convert it with gmx editconf -o file.pdb"
    if len(lines) >= 3 and lines[0].strip().isdigit() and len(lines[2].split()) == 4:
        return "looks like an XYZ file"
    return "no PDB records or mmCIF data block in its first lines"


def _not_a_structure(path: Path, why: str) -> DataError:
    return DataError(path, f"not a PDB or mmCIF file ({why})")


@lru_cache(maxsize=4096)
def _polymer_residue(name: str) -> bool:
    import gemmi

    info = gemmi.find_tabulated_residue(name)
    return info is not None and (info.is_amino_acid() or info.is_nucleic_acid())


@lru_cache(maxsize=4096)
def _is_element(symbol: str) -> bool:
    import gemmi

    return gemmi.Element(symbol).atomic_number > 0


@lru_cache(maxsize=65536)
def infer_element(residue: str, atom_name: str) -> str | None:
    """Element of an atom without an element column, from its name and residue; None: leave it to gemmi."""
    name = atom_name.strip().lstrip("0123456789").upper()  # "1HB2" -> "HB2"
    residue = residue.strip().upper()
    if not name:
        return None
    if _polymer_residue(residue):
        if name.startswith("SE"):  # selenomethionine, selenocysteine
            return "SE"
        return name[0] if name[0] in "CNOSHPD" else None
    if name == residue and _is_element(name):  # ions: CA in CA, ZN in ZN, MG in MG
        return name
    return None


def fill_blank_elements(text: str) -> str:
    """PDB text with the element columns (77-78) filled where blank and `infer_element` knows better."""
    text = "\n" + text  # so that the first line, too, follows a newline
    if _BLANK_ELEMENT.search(text) is None:
        return text[1:]

    def fill(m: re.Match[str]) -> str:
        line = m.group(0)[1:]
        element = infer_element(line[17:20], line[12:16])
        if element is None:
            return m.group(0)
        body = line.removesuffix("\r")
        return f"\n{body[:76]:<76}{element:>2}{body[78:]}{line[len(body) :]}"

    return _BLANK_ELEMENT.sub(fill, text)[1:]


# Columns gemmi needs in an mmCIF atom_site loop (it silently reads no atoms without them), and how to make
# each from the file's other columns.
_ATOM_SITE_NEEDS = ("id", "type_symbol", "label_alt_id", "label_asym_id", "Cartn_x", "Cartn_y", "Cartn_z")


def complete_atom_site(path: Path, block) -> None:
    """Add the atom_site columns gemmi needs but a minimal mmCIF writer may leave out (alt id, ids,
    elements, label chain); DataError naming the missing column when it cannot be made."""
    table = block.find_mmcif_category("_atom_site.")
    if len(table) == 0:
        return  # no atoms: reported as such after parsing
    tags = {t.removeprefix("_atom_site.") for t in table.tags}
    missing = [c for c in _ATOM_SITE_NEEDS if c not in tags]
    if not missing:
        return
    loop = block.find_loop("_atom_site." + next(iter(sorted(tags)))).get_loop()
    if loop is None:
        raise DataError(path, "_atom_site is not a loop")
    n = loop.length()
    for col in missing:
        if col == "label_alt_id":
            values = ["."] * n
        elif col == "id":
            values = [str(i + 1) for i in range(n)]
        elif col == "label_asym_id" and "auth_asym_id" in tags:
            values = list(block.find_values("_atom_site.auth_asym_id"))
        elif col == "type_symbol" and tags & {"label_atom_id", "auth_atom_id"}:
            atom_tag = "label_atom_id" if "label_atom_id" in tags else "auth_atom_id"
            comp_tag = "label_comp_id" if "label_comp_id" in tags else "auth_comp_id"
            atoms = list(block.find_values(f"_atom_site.{atom_tag}"))
            comps = list(block.find_values(f"_atom_site.{comp_tag}")) if comp_tag in tags else [""] * n
            values = [
                infer_element(c, a) or a.strip("\"'")[:1] or "X" for c, a in zip(comps, atoms, strict=True)
            ]
        else:
            raise DataError(path, f"mmCIF _atom_site has no {col} column")
        loop.add_columns([f"_atom_site.{col}"], ".")
        column = block.find_values(f"_atom_site.{col}")
        for i, v in enumerate(values):
            column[i] = v
