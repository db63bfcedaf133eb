"""The captions CSV (columns image, caption, optional tag columns and split), read, checked row by row and
grouped by image."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.image_text.messages import one_line

# Optional tag columns: the per-entity texts of E2's regional loss, in this order.
ENTITIES: tuple[str, ...] = ("category", "brand", "description", "season", "composition")
SPLITS = ("train", "val", "test")


@dataclass
class CaptionTable:
    """Caption rows grouped by image: image ``i`` is ``names[i]`` with rows ``rows_of_image[i]``.

    ``rows`` are the CSV rows (stripped strings), ``image_of_row[r]`` the image of row ``r``,
    ``split_of_image`` the ``split`` column per image (empty without it); ``tag_columns`` the tag columns
    present.
    """

    source: Path
    rows: list[dict[str, str]]
    tag_columns: list[str]
    has_split: bool
    names: list[str] = field(default_factory=list)
    rows_of_image: list[list[int]] = field(default_factory=list)
    image_of_row: list[int] = field(default_factory=list)
    split_of_image: list[str] = field(default_factory=list)

    @property
    def captions(self) -> list[str]:
        """The caption of every row."""
        return [row["caption"] for row in self.rows]

    def subset(self, n_images: int, seed: int) -> CaptionTable:
        """A seeded random `n_images` of the images with all their captions (rows regrouped by image)."""
        keep = sorted(np.random.default_rng(seed).permutation(len(self.names))[:n_images])
        out = CaptionTable(self.source, [], self.tag_columns, self.has_split)
        for new_i, i in enumerate(keep):
            old = self.rows_of_image[i]
            out.rows_of_image.append(list(range(len(out.rows), len(out.rows) + len(old))))
            out.image_of_row.extend([new_i] * len(old))
            out.rows.extend(self.rows[r] for r in old)
            out.names.append(self.names[i])
            out.split_of_image.append(self.split_of_image[i])
        return out


def read_rows(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The rows of a UTF-8 CSV with columns image and caption (values stripped), and its column names."""
    if not path.is_file():
        raise DataError(path, "captions CSV not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in ("image", "caption") if c not in columns]
            if missing:
                raise DataError(
                    path,
                    f"missing required column(s) {', '.join(map(repr, missing))} "
                    f"(found: {', '.join(columns)})",
                )
            reader.fieldnames = columns
            rows = []
            for n, row in enumerate(reader, start=1):
                if None in row:
                    raise DataError(path, f"row {n}: more fields than columns")
                rows.append({k: (v or "").strip() for k, v in row.items()})
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({one_line(exc)})") from exc
    except csv.Error as exc:
        raise DataError(path, f"malformed CSV ({one_line(exc)})") from exc
    if not rows:
        raise DataError(path, "no rows")
    return rows, columns


def read_captions(path: Path, image_dir: Path) -> CaptionTable:
    """Read the CSV and group its rows by image, in order of first appearance.

    Every row needs an image and a caption, every image must exist in `image_dir`, and with a split column
    each image must be in exactly one of train, val and test.
    """
    rows, columns = read_rows(path)
    table = CaptionTable(path, rows, [e for e in ENTITIES if e in columns], "split" in columns)
    index: dict[str, int] = {}
    for n, row in enumerate(rows, start=1):
        name, caption = row["image"], row["caption"]
        if not name:
            raise DataError(path, f"row {n}: empty 'image'")
        if not caption:
            raise DataError(path, f"row {n}: empty 'caption' for image '{name}'")
        if name not in index:
            if not (image_dir / name).is_file():
                raise DataError(path, f"row {n}: image '{name}' not found in {image_dir}")
            index[name] = len(table.names)
            table.names.append(name)
            table.rows_of_image.append([])
            table.split_of_image.append(row.get("split", "").lower())
        i = index[name]
        if table.has_split:
            split = row.get("split", "").lower()
            if split not in SPLITS:
                raise DataError(path, f"row {n}: split '{split}' is not train, val or test")
            if split != table.split_of_image[i]:
                raise DataError(path, f"row {n}: image '{name}' is in two splits")
        table.rows_of_image[i].append(len(table.image_of_row))
        table.image_of_row.append(i)
    return table
