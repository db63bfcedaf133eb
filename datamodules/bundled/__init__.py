"""Data sets shipped inside the package, named in experiment files as `bundled:<name>`.

Only the quickstart's small hypergraph is bundled (about 300 KB), so that
`plexlab sweep sweeps/quickstart.yaml` runs from a fresh clone with nothing beside it; the larger benchmark
sets are read from where the user keeps them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PREFIX = "bundled:"


def names() -> list[str]:
    """The bundled data sets."""
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def path(name: str) -> Path:
    """The folder of a bundled data set; KeyError names the ones there are."""
    if name not in names():
        raise KeyError(f"no bundled data set {name!r}; bundled: {', '.join(names())}")
    return Path(str(resources.files(__name__) / name))
