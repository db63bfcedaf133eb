"""`plexlab data check PATH --data NAME`: read and validate a user's data with a data module, without
training, and say what was found (counts, modalities, labels, splits, rejected records)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plexlab import contract, registry
from plexlab.config import set_dotted, validate_section
from plexlab.errors import ConfigError
from plexlab.train import construct


def check(path: str | Path, data: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Set up data module `data` on `path` as a fit would and summarize it; bad input raises the reader's
    one-line DataError (or a ConfigError for a bad setting)."""
    source = "plexlab data check"
    section: dict[str, Any] = {"name": data, "path": str(path)}
    for key, value in (overrides or {}).items():
        key = key.removeprefix("data.")
        if key == "name":
            raise ConfigError(source, "--data", "the data module is named by --data, not --set")
        set_dotted(section, key, value, source)
    section = validate_section(section, "data", registry.datamodule_class, source)
    dm = construct(
        source, "data", registry.datamodule_class(data), {k: v for k, v in section.items() if k != "name"}
    )
    dm.setup("fit")
    summary: dict[str, Any] = {"data module": data, "path": section.get("path")}
    summary.update(dm.summary() if isinstance(dm, contract.Summarizes) else _generic_summary(dm))
    summary["model arguments from the data"] = dm.model_kwargs()
    if isinstance(dm, contract.ReportsSkips):
        summary["rejected"] = dict(dm.skip_table())
    return summary


def _generic_summary(dm: Any) -> dict[str, Any]:
    """Sizes of the splits where the loaders' datasets know their length."""
    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        try:
            loaders = getattr(dm, f"{split}_dataloader")()
        except Exception:  # a data module without this split
            continue
        for i, loader in enumerate(loaders if isinstance(loaders, list | tuple) else [loaders]):
            dataset = getattr(loader, "dataset", None)
            label = split if i == 0 else f"{split} {i}"
            out[f"{label} samples"] = len(dataset) if hasattr(dataset, "__len__") else "unknown (streamed)"
    return out
