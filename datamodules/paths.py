"""Path types for data-module and model arguments: the platform resolves what is annotated as a path.

`pathlib.Path` (or `Path | None`) is an input that must exist when the config is validated; `OutputPath` is
a folder or file the data module may create (a cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated


class MayNotExist:
    """Marker: the path need not exist before the run (the data module creates it)."""


OutputPath = Annotated[Path, MayNotExist()]
