"""Environment variables set for the duration of a block, then put back as they were."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def temporarily(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ inside the block; afterwards each variable as it was (or unset again)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
