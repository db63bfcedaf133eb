"""Caption tokenizers: a word-level vocabulary built offline from the training captions, or a local
pretrained tokenizer (``transformers.AutoTokenizer``, ``local_files_only``: nothing downloads)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import torch
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.image_text.messages import one_line

_WORD_RE = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    """Lower-cased words (inner hyphens and apostrophes kept) and single punctuation marks of `text`."""
    return _WORD_RE.findall(text.lower())


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
        counts = Counter(w for t in texts for w in words(t))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept)

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        """Read a vocabulary written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
            saved = data["words"]
            if not isinstance(saved, list) or not all(isinstance(w, str) for w in saved):
                raise ValueError("'words' must be a list of strings")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(path, f"not a word-tokenizer vocabulary ({one_line(exc)})") from exc
        return cls(saved[len(cls.specials) :] if saved[: len(cls.specials)] == list(cls.specials) else saved)

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
            tokens = [self.stoi.get(w, self.unk_token_id) for w in words(text)]
            seq = [self.bos_token_id, *tokens[: max_length - 2], self.eos_token_id]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids, mask


class PretrainedTokenizer:
    """A local pretrained tokenizer (transformers), e.g. the CLIP BPE tokenizer saved beside the weights."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DataError(path, f"cannot load a local tokenizer ({one_line(exc)})") from exc
        self.pad_token_id = (
            self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        )
        self.bos_token_id = self.tok.bos_token_id
        self.eos_token_id = self.tok.eos_token_id

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask ``[len(texts), max_length]``, padded and truncated."""
        out = self.tok(
            list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return out["input_ids"].long(), out["attention_mask"].long()


Tokenizer = WordTokenizer | PretrainedTokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A ``.json`` vocabulary written by :meth:`WordTokenizer.save`, else a local pretrained tokenizer."""
    path = Path(path)
    return WordTokenizer.load(path) if path.suffix == ".json" else PretrainedTokenizer(str(path))
