"""The batch the image-text data module yields and E2 consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
