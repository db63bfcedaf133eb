"""Image-caption folders written for the image-text tests (imported, not collected)."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}


def make_dataset(
    root: Path, n_images: int = 12, captions_per_image: int = 2, tags: bool = False, split: bool = False
) -> Path:
    """Solid-colour images (non-square, so the crop matters) with captions naming the colour."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLORS)
    header = ["image", "caption"] + (["category", "brand"] if tags else []) + (["split"] if split else [])
    with open(root / "captions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i in range(n_images):
            color = names[i % len(names)]
            Image.new("RGB", (40 + i, 30), COLORS[color]).save(root / "images" / f"img{i:02d}.png")
            for c in range(captions_per_image):
                row = [f"img{i:02d}.png", f"A {color} square number {c} ."]
                if tags:
                    row += [f"{color} thing", "" if i % 2 else f"brand{i}"]
                if split:
                    row += ["train" if i < n_images - 4 else ("val" if i < n_images - 2 else "test")]
                w.writerow(row)
    return root
