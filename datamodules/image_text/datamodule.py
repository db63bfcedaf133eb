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

Images are decoded with PIL only (no torchvision, ``images.py``): shortest side resized to ``image_size``
(bicubic), centre crop, CLIP mean/std normalisation. All images are decoded once in ``setup`` (this validates
them before training) and kept in memory as uint8.

Tokenization: with ``tokenizer_path`` a local pretrained tokenizer directory (e.g. the CLIP tokenizer saved
next to the CLIP weights) is loaded with ``transformers.AutoTokenizer`` (``local_files_only``: nothing
downloads), or a ``.json`` word vocabulary written by :meth:`WordTokenizer.save`. Without it a word-level
vocabulary is built from the training captions (lower-cased words and punctuation, ``<pad>``, ``<unk>``,
``<bos>``, ``<eos>``), which is deterministic given the data and the split seed.

Splits are by image (an image and all its captions belong to exactly one split): an optional ``split`` column
(train/val/test) or a seeded random split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from plexlab.datamodules.image_text.batch import ImageTextBatch
from plexlab.datamodules.image_text.captions import ENTITIES, CaptionTable, read_captions
from plexlab.datamodules.image_text.entities import entity_texts, resolve_source
from plexlab.datamodules.image_text.images import load_images, normalize_images
from plexlab.datamodules.image_text.splits import split_images
from plexlab.datamodules.image_text.tokenizers import Tokenizer, WordTokenizer, load_tokenizer
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

__all__ = ["ImageTextBatch", "ImageTextDataModule"]


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

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Read and validate the CSV, decode every image, split by image, build the tokenizer. Runs once."""
        if self._ready:
            return
        table = self._read_table()
        self.image_names = table.names
        self._rows_of_image, self._image_of_row = table.rows_of_image, table.image_of_row
        self.captions = table.captions
        self.resolved_entity_source = resolve_source(self.entity_source, table)
        self.entity_texts = entity_texts(table, self.resolved_entity_source)
        self.splits = self._split(table)
        # Decode every image now: bad files fail before training, and epochs do not re-decode JPEGs.
        self._pixels = load_images(self.image_dir, table.names, self.image_size)
        self.tokenizer = self._tokenizer()
        self._encode_texts()
        self._ready = True
        self._log_summary()

    def _read_table(self) -> CaptionTable:
        """The captions grouped by image; with `max_images`, a seeded subset of the images."""
        table = read_captions(self.captions_file, self.image_dir)
        if self.max_images is not None and self.max_images < len(table.names):
            table = table.subset(self.max_images, self.seed + 1)  # for quick experiments and tests
        return table

    def _split(self, table: CaptionTable) -> dict[str, list[int]]:
        """Image indices per split: the CSV's split column, else seeded random fractions."""
        column = table.split_of_image if table.has_split else None
        n = len(table.names)
        return split_images(column, n, self.val_fraction, self.test_fraction, self.seed, self.captions_file)

    def _tokenizer(self) -> Tokenizer:
        """The tokenizer at `tokenizer_path`, else a word vocabulary of the training captions and entities."""
        if self.tokenizer_path:
            return load_tokenizer(self.tokenizer_path)
        train_rows = [r for i in self.splits["train"] for r in self._rows_of_image[i]]
        texts = [self.captions[r] for r in train_rows] + [t for r in train_rows for t in self.entity_texts[r]]
        return WordTokenizer.build(texts, self.vocab_min_count)

    def _encode_texts(self) -> None:
        """Token ids and masks of every caption ``[rows, L]`` and entity text ``[rows, E, L]``, once."""
        L, E = self.max_text_length, len(ENTITIES)
        self._caption_ids, self._caption_mask = self.tokenizer.encode(self.captions, L)
        flat = [t for texts in self.entity_texts for t in texts]
        ids, mask = self.tokenizer.encode(flat, L)
        self._entity_ids, self._entity_mask = ids.view(-1, E, L), mask.view(-1, E, L)
        self._entity_valid = torch.tensor([[bool(t) for t in texts] for texts in self.entity_texts])

    def _log_summary(self) -> None:
        log.info(
            "image_text: %d images, %d captions (train/val/test images %d/%d/%d), vocab %d, entities from %s "
            "(%.0f%% present)",
            len(self.image_names),
            len(self.captions),
            len(self.splits["train"]),
            len(self.splits["val"]),
            len(self.splits["test"]),
            len(self.tokenizer),
            self.resolved_entity_source,
            100 * self._entity_valid.float().mean().item(),
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
