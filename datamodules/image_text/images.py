"""Image decoding with PIL only (no torchvision): RGB, shortest side resized (bicubic), centre crop, uint8;
CLIP mean/std normalisation at batch time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from plexlab.datamodules.errors import DataError
from plexlab.datamodules.image_text.messages import one_line

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


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
        raise DataError(path, f"not a readable image ({type(exc).__name__}: {one_line(exc)})") from exc
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_images(folder: Path, names: list[str], size: int) -> torch.Tensor:
    """uint8 ``[len(names), 3, size, size]``: every image decoded once (a bad file fails before training)."""
    return torch.from_numpy(np.stack([load_image(folder / n, size) for n in names]))


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float, CLIP mean/std normalised."""
    mean = torch.from_numpy(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.from_numpy(CLIP_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
