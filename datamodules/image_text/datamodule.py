"""Image-text pairs for contrastive retrieval models (E2, CLIP): a folder of images plus a captions CSV.

Input layout (``path``)::

    captions.csv      columns: image, caption [, category, brand, description, season, composition] [, split]
    images/           the image files named in the ``image`` column

Several rows may name the same image (several captions per image, as in Flickr8k). The optional tag columns
give the per-entity texts of E2's regional loss. Without them the entity texts are built from the captions
(``entity_source``):

- ``chunks`` (default when there are no tag columns): the caption is cut into noun-phrase-like chunks at
  prepositions, conjunctions, auxiliary verbs and ``-ing`` verbs ("A child in a pink dress is climbing up a
  set of stairs" -> "a child", "a pink dress", "a set of stairs"); entity k is the k-th chunk of the same
  caption, entities beyond the number of chunks are marked invalid (left out of the regional loss).
- ``captions``: entity k is the k-th *other* caption of the same image.

Images are decoded with PIL only (no torchvision): shortest side resized to ``image_size`` (bicubic), centre
crop, CLIP mean/std normalisation. All images are decoded once in ``setup`` (this validates them before
training) and kept in memory as uint8.

Tokenization: with ``tokenizer_path`` a local pretrained tokenizer directory (e.g. the CLIP tokenizer saved
next to the CLIP weights) is loaded with ``transformers.AutoTokenizer`` (``local_files_only``: nothing
downloads), or a ``.json`` word vocabulary written by :meth:`WordTokenizer.save`. Without it a word-level
vocabulary is built from the training captions (lower-cased words and punctuation, ``<pad>``, ``<unk>``,
``<bos>``, ``<eos>``), which is deterministic given the data and the split seed.

Splits are by image (an image and all its captions belong to exactly one split): an optional ``split`` column
(train/val/test) or a seeded random split.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from plexlab.datamodules.errors import DataError
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

ENTITIES: tuple[str, ...] = ("category", "brand", "description", "season", "composition")
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

# Words that end a noun-phrase-like chunk (they are dropped): prepositions, conjunctions, auxiliaries and
# frequent verbs. "of" is kept inside chunks ("a set of stairs"). Any word ending in "ing" also ends a chunk.
_CHUNK_BREAKS = frozenset(
    """in on at with into onto through near by under over while and or but is are was were be being been
    has have had to from for up down out off across along around behind above below beside next past
    toward towards against as that who which where when then there their his her its they he she it
    front one two three four five several some stands sits runs jumps walks looks plays holds wears
    rides""".split()
)
# Nouns ending in "ing" that must not end a chunk.
_ING_NOUNS = frozenset(
    """building buildings clothing ceiling painting paintings swing swings spring string morning evening
    something nothing everything thing things wedding railing railings stocking pudding sibling siblings
    awning ring rings wing wings king ceiling ceilings stuffing frosting icing""".split()
)
_WORD_RE = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[^\sa-z0-9]")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def caption_chunks(caption: str) -> list[str]:
    """Noun-phrase-like chunks of a caption (see the module docstring); punctuation is dropped."""
    chunks: list[str] = []
    current: list[str] = []
    for word in _WORD_RE.findall(caption.lower()):
        verb_ing = word.endswith("ing") and len(word) > 4 and word not in _ING_NOUNS
        is_break = word in _CHUNK_BREAKS or verb_ing or not word[0].isalnum()
        if is_break:
            if current:
                chunks.append(" ".join(current))
            current = []
        elif current or word != "of":  # "in front of a tree" -> "a tree"
            current.append(word)
    if current:
        chunks.append(" ".join(current))
    # A chunk that is only a determiner says nothing.
    return [c for c in chunks if c not in {"a", "an", "the"}]


class WordTokenizer:
    """Word-level tokenizer built offline from training captions (CLIP's BPE vocabulary cannot be downloaded).

    Lower-cased words and single punctuation marks; ids 0..3 are ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``.
    ``<eos>`` is deliberately not id 2 (transformers' CLIP text model then pools at the first ``<eos>``).
    """

    specials: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>")

    def __init__(self, words: list[str]) -> None:
        self.itos = list(self.specials) + [w for w in words if w not in self.specials]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad_token_id, self.unk_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2, 3

    @classmethod
    def build(cls, texts: list[str], min_count: int = 1) -> WordTokenizer:
        """Vocabulary of the words seen at least ``min_count`` times, most frequent first."""
        counts = Counter(w for t in texts for w in _WORD_RE.findall(t.lower()))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        """Read a vocabulary written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
            words = data["words"]
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise ValueError("'words' must be a list of strings")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(path, f"not a word-tokenizer vocabulary ({_one_line(exc)})") from exc
        return cls(words[len(cls.specials) :] if words[: len(cls.specials)] == list(cls.specials) else words)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON, atomically."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump({"words": self.itos}, fh)
        os.replace(tmp, path)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[len(texts), max_length]`` (``<bos>`` words ``<eos>``, padded, truncated) and mask."""
        ids = torch.full((len(texts), max_length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for row, text in enumerate(texts):
            words = [self.stoi.get(w, self.unk_token_id) for w in _WORD_RE.findall(text.lower())]
            seq = [self.bos_token_id, *words[: max_length - 2], self.eos_token_id]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids, mask


class _HFTokenizer:
    """A local pretrained tokenizer (transformers), e.g. the CLIP BPE tokenizer saved beside the weights."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DataError(path, f"cannot load a local tokenizer ({_one_line(exc)})") from exc
        self.pad_token_id = (
            self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        )
        self.bos_token_id = self.tok.bos_token_id
        self.eos_token_id = self.tok.eos_token_id

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tok(
            list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return out["input_ids"].long(), out["attention_mask"].long()


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode an image to uint8 ``[3, size, size]``: RGB, shortest side to ``size`` (bicubic), centre crop.

    Raises DataError naming the file when it is not a readable image.
    """
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, still >= size
            img = img.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise DataError(path, f"not a readable image ({type(exc).__name__}: {_one_line(exc)})") from exc
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float, CLIP mean/std normalised."""
    mean = torch.from_numpy(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.from_numpy(CLIP_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@dataclass
class ImageTextBatch:
    """One batch of images with one caption each, its entity texts, and all captions of those images.

    ``input_ids``/``attention_mask`` ``[B, L]``: the caption paired with each image (random among the image's
    captions when training, the first one otherwise). ``entity_ids``/``entity_mask`` ``[B, E, L]`` and
    ``entity_valid`` ``[B, E]``: the entity texts; invalid ones are left out of the regional loss.
    ``caption_ids``/``caption_mask`` ``[C, L]`` and ``caption_owner`` ``[C]`` (row in the batch): every
    caption of the batch's images, for retrieval over all candidates. ``image_index`` ``[B]``: index of the
    image in its split.
    """

    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    entity_ids: torch.Tensor
    entity_mask: torch.Tensor
    entity_valid: torch.Tensor
    caption_ids: torch.Tensor
    caption_mask: torch.Tensor
    caption_owner: torch.Tensor
    image_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.pixel_values.shape[0])


class _ImageTextDataset(Dataset):
    def __init__(self, dm: ImageTextDataModule, images: list[int], random_caption: bool) -> None:
        self.dm = dm
        self.images = images
        self.random_caption = random_caption

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        image = self.images[i]
        rows = self.dm._rows_of_image[image]
        # Global torch RNG: seeded by lightning.seed_everything (and per worker), so runs are reproducible.
        pick = int(torch.randint(len(rows), (1,)).item()) if self.random_caption else 0
        return i, image, rows[pick]


class ImageTextDataModule(pl.LightningDataModule):
    """Images + captions CSV (+ optional entity tag columns) for E2/CLIP retrieval; see the module docstring.

    One training sample is one image with one of its captions (drawn at random each time), so an image never
    appears twice in a batch (no false negatives from the same image). Validation and test batches carry all
    captions of their images, for image-to-text and text-to-image retrieval over all candidates.
    """

    def __init__(
        self,
        path: Path | str,
        captions_file: Path | str | None = None,
        image_dir: Path | str | None = None,
        image_size: int = 224,
        max_text_length: int = 77,
        entity_source: Literal["auto", "columns", "chunks", "captions"] = "auto",
        tokenizer_path: Path | str | None = None,
        vocab_min_count: int = 1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        max_images: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.path = Path(path)
        self.captions_file = Path(captions_file) if captions_file else self.path / "captions.csv"
        if image_dir:
            self.image_dir = Path(image_dir)
        else:
            self.image_dir = self.path / "images" if (self.path / "images").is_dir() else self.path
        self.image_size = image_size
        self.max_text_length = max_text_length
        self.entity_source = entity_source
        self.tokenizer_path = tokenizer_path
        self.vocab_min_count = vocab_min_count
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.max_images = max_images
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._ready = False

    # ------------------------------------------------------------------ reading
    def _read_csv(self) -> tuple[list[dict[str, str]], list[str], bool]:
        if not self.captions_file.is_file():
            raise DataError(self.captions_file, "captions CSV not found")
        try:
            with open(self.captions_file, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                columns = [c.strip() for c in (reader.fieldnames or [])]
                missing = [c for c in ("image", "caption") if c not in columns]
                if missing:
                    raise DataError(
                        self.captions_file,
                        f"missing required column(s) {', '.join(map(repr, missing))} "
                        f"(found: {', '.join(columns)})",
                    )
                reader.fieldnames = columns
                rows = []
                for n, row in enumerate(reader, start=1):
                    if None in row:
                        raise DataError(self.captions_file, f"row {n}: more fields than columns")
                    rows.append({k: (v or "").strip() for k, v in row.items()})
        except UnicodeDecodeError as exc:
            raise DataError(self.captions_file, f"not UTF-8 text ({_one_line(exc)})") from exc
        except csv.Error as exc:
            raise DataError(self.captions_file, f"malformed CSV ({_one_line(exc)})") from exc
        if not rows:
            raise DataError(self.captions_file, "no rows")
        tag_columns = [e for e in ENTITIES if e in columns]
        return rows, tag_columns, "split" in columns

    def _entity_texts(self, rows: list[dict[str, str]], tag_columns: list[str]) -> list[list[str]]:
        source = self.entity_source
        if source == "auto":
            source = "columns" if tag_columns else "chunks"
        if source == "columns" and not tag_columns:
            raise DataError(
                self.captions_file,
                f"entity_source 'columns' needs at least one tag column ({', '.join(ENTITIES)})",
            )
        self.resolved_entity_source = source
        out: list[list[str]] = []
        for r, row in enumerate(rows):
            if source == "columns":
                texts = [row.get(e, "") for e in ENTITIES]
            elif source == "chunks":
                texts = caption_chunks(row["caption"])[: len(ENTITIES)]
            else:  # the other captions of the same image
                texts = [rows[o]["caption"] for o in self._rows_of_image[self._image_of_row[r]] if o != r]
                texts = texts[: len(ENTITIES)]
            out.append(texts + [""] * (len(ENTITIES) - len(texts)))
        return out

    def _split(self, n_images: int, split_col: list[str] | None) -> dict[str, list[int]]:
        if split_col is not None:
            out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
            for i, s in enumerate(split_col):
                out[s].append(i)
            return out
        perm = np.random.default_rng(self.seed).permutation(n_images).tolist()
        # At least two images in a non-empty evaluation split (retrieval among one candidate is meaningless).
        n_val = max(2, round(self.val_fraction * n_images)) if self.val_fraction > 0 else 0
        n_test = max(2, round(self.test_fraction * n_images)) if self.test_fraction > 0 else 0
        if n_images - n_val - n_test < 2:
            raise DataError(self.captions_file, f"{n_images} images are too few to split")
        return {
            "val": sorted(perm[:n_val]),
            "test": sorted(perm[n_val : n_val + n_test]),
            "train": sorted(perm[n_val + n_test :]),
        }

    def setup(self, stage: str | None = None) -> None:
        """Read and validate the CSV, decode every image, split by image, build the tokenizer. Runs once."""
        if self._ready:
            return
        rows, tag_columns, has_split = self._read_csv()
        names: list[str] = []
        index: dict[str, int] = {}
        self._rows_of_image: list[list[int]] = []
        self._image_of_row: list[int] = []
        split_of_image: list[str] = []
        for n, row in enumerate(rows, start=1):
            name, caption = row["image"], row["caption"]
            if not name:
                raise DataError(self.captions_file, f"row {n}: empty 'image'")
            if not caption:
                raise DataError(self.captions_file, f"row {n}: empty 'caption' for image '{name}'")
            if name not in index:
                if not (self.image_dir / name).is_file():
                    raise DataError(
                        self.captions_file, f"row {n}: image '{name}' not found in {self.image_dir}"
                    )
                index[name] = len(names)
                names.append(name)
                self._rows_of_image.append([])
                split_of_image.append(row.get("split", "").lower())
            i = index[name]
            if has_split:
                split = row.get("split", "").lower()
                if split not in ("train", "val", "test"):
                    raise DataError(self.captions_file, f"row {n}: split '{split}' is not train, val or test")
                if split != split_of_image[i]:
                    raise DataError(self.captions_file, f"row {n}: image '{name}' is in two splits")
            self._rows_of_image[i].append(len(self._image_of_row))
            self._image_of_row.append(i)

        if self.max_images is not None and self.max_images < len(names):
            # A seeded random subset of images (with all their captions), for quick experiments and tests.
            keep = sorted(np.random.default_rng(self.seed + 1).permutation(len(names))[: self.max_images])
            old_rows_of_image = self._rows_of_image
            rows = [rows[r] for i in keep for r in old_rows_of_image[i]]
            names = [names[i] for i in keep]
            split_of_image = [split_of_image[i] for i in keep]
            self._rows_of_image, self._image_of_row, pos = [], [], 0
            for new_i, i in enumerate(keep):
                count = len(old_rows_of_image[i])
                self._rows_of_image.append(list(range(pos, pos + count)))
                self._image_of_row.extend([new_i] * count)
                pos += count

        self.image_names = names
        self.captions = [row["caption"] for row in rows]
        self.entity_texts = self._entity_texts(rows, tag_columns)
        self.splits = self._split(len(names), split_of_image if has_split else None)

        # Decode every image now: bad files fail before training, and epochs do not re-decode JPEGs.
        self._pixels = torch.from_numpy(
            np.stack([load_image(self.image_dir / n, self.image_size) for n in names])
        )

        if self.tokenizer_path:
            p = Path(self.tokenizer_path)
            self.tokenizer = WordTokenizer.load(p) if p.suffix == ".json" else _HFTokenizer(str(p))
        else:
            train_rows = [r for i in self.splits["train"] for r in self._rows_of_image[i]]
            texts = [self.captions[r] for r in train_rows] + [
                t for r in train_rows for t in self.entity_texts[r]
            ]
            self.tokenizer = WordTokenizer.build(texts, self.vocab_min_count)
        L, E = self.max_text_length, len(ENTITIES)
        self._caption_ids, self._caption_mask = self.tokenizer.encode(self.captions, L)
        flat = [t for texts in self.entity_texts for t in texts]
        ids, mask = self.tokenizer.encode(flat, L)
        self._entity_ids, self._entity_mask = ids.view(-1, E, L), mask.view(-1, E, L)
        self._entity_valid = torch.tensor([[bool(t) for t in texts] for texts in self.entity_texts])
        self._ready = True
        n_valid = self._entity_valid.float().mean().item()
        log.info(
            "image_text: %d images, %d captions (train/val/test images %d/%d/%d), vocab %d, entities from %s "
            "(%.0f%% present)",
            len(names),
            len(rows),
            len(self.splits["train"]),
            len(self.splits["val"]),
            len(self.splits["test"]),
            len(self.tokenizer),
            self.resolved_entity_source,
            100 * n_valid,
        )

    # ------------------------------------------------------------------ batches
    def model_kwargs(self) -> dict[str, Any]:
        """Data-derived E2 arguments: vocabulary size and special ids, text length, image size."""
        return {
            "vocab_size": len(self.tokenizer),
            "pad_token_id": int(self.tokenizer.pad_token_id),
            "bos_token_id": int(self.tokenizer.bos_token_id),
            "eos_token_id": int(self.tokenizer.eos_token_id),
            "max_text_length": self.max_text_length,
            "image_size": self.image_size,
            "num_entities": len(ENTITIES),
        }

    def collate(self, items: list[tuple[int, int, int]]) -> ImageTextBatch:
        """Stack the chosen rows; gather every caption of the batch's images for retrieval."""
        pos = torch.tensor([i for i, _, _ in items])
        images = [img for _, img, _ in items]
        rows = torch.tensor([r for _, _, r in items])
        all_rows = [r for img in images for r in self._rows_of_image[img]]
        owner = [b for b, img in enumerate(images) for _ in self._rows_of_image[img]]
        return ImageTextBatch(
            pixel_values=normalize_images(self._pixels[images]),
            input_ids=self._caption_ids[rows],
            attention_mask=self._caption_mask[rows],
            entity_ids=self._entity_ids[rows],
            entity_mask=self._entity_mask[rows],
            entity_valid=self._entity_valid[rows],
            caption_ids=self._caption_ids[all_rows],
            caption_mask=self._caption_mask[all_rows],
            caption_owner=torch.tensor(owner, dtype=torch.long),
            image_index=pos,
        )

    def _loader(self, images: list[int], train: bool) -> DataLoader:
        return DataLoader(
            _ImageTextDataset(self, images, random_caption=train),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and len(images) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits["train"], train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits["val"], train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"], train=False)

    def predict_dataloader(self) -> DataLoader:
        """Every image once, in :meth:`sample_ids` order (sorted by file name)."""
        return self._loader(self._predict_order(), train=False)

    def _predict_order(self) -> list[int]:
        return sorted(range(len(self.image_names)), key=lambda i: self.image_names[i])

    def sample_ids(self) -> list[str]:
        """Image file names in :meth:`predict_dataloader` order."""
        return [self.image_names[i] for i in self._predict_order()]
