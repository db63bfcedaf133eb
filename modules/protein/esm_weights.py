"""Pretrained ESM-2 weights, by fair-esm model name (torch hub cache) or from a local file, loaded safely.

fair-esm's own loaders call `torch.load` without `weights_only`, so a checkpoint can run code when it is
read. plexlab reads the files itself with `torch.load(..., weights_only=True)` and hands the tensors to
fair-esm's core loader (`esm.pretrained.load_model_and_alphabet_core`), which builds the architecture the
checkpoint describes. Names resolve where fair-esm keeps them: `torch.hub.get_dir()/checkpoints/<name>.pt`
(`$TORCH_HOME/hub`, by default `~/.cache/torch/hub`), with `<name>-contact-regression.pt` beside it. A
missing file is downloaded from fair-esm's URL into that folder, as fair-esm does, unless `HF_HUB_OFFLINE`
says this machine is offline; then, or when the download fails, one line names the file and the folder.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from plexlab.datamodules.errors import DataError, first_line

MODEL_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
REGRESSION_URL = "https://dl.fbaipublicfiles.com/fair-esm/regression/{name}-contact-regression.pt"

# What weights_only may unpickle beyond tensors and plain containers: fair-esm's checkpoints keep their
# training arguments as argparse.Namespace ("args", and "cfg"["model"] of ESM-2). A Namespace only holds
# attributes; it runs nothing when unpickled. Nothing else is allowed.
ESM_CHECKPOINT_GLOBALS = [argparse.Namespace]

_OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}


def esm2_names() -> list[str]:
    """The ESM-2 models fair-esm publishes (its `esm.pretrained.esm2_*` loaders), smallest first."""
    import esm

    names = [n for n in dir(esm.pretrained) if re.fullmatch(r"esm2_t\d+_\w+", n)]
    return sorted(names, key=lambda n: int(n.split("_")[1][1:]))


def offline() -> bool:
    """True when `HF_HUB_OFFLINE` is set: the switch offline clusters already set for transformers."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _OFFLINE_VALUES


def hub_checkpoint(name: str) -> Path:
    """Where fair-esm's hub loader keeps (and looks for) the weights of model `name`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.pt"


def read_checkpoint(path: Path, key: str) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` with only ESM_CHECKPOINT_GLOBALS allowed; a one-line DataError
    (source `key`) when the file is missing, truncated, or holds anything else (objects that could run code).
    """
    try:
        with torch.serialization.safe_globals(ESM_CHECKPOINT_GLOBALS):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"WeightsUnpickler error: ([^\n]+?)(?: was not an allowed|\.?\n|$)", str(exc))
        why = refused.group(1) if refused else first_line(exc, 200)
        raise DataError(key, f"{path}: refused by weights_only loading ({why})") from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise DataError(key, f"{path}: not a readable checkpoint ({first_line(exc, 200)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise DataError(key, f"{path}: not a fair-esm checkpoint (no 'model' state dict)")
    return data


def _build(name: str, model_data: dict[str, Any], regression: dict[str, Any] | None, path: Path, key: str):
    import esm

    if "cfg" not in model_data:
        raise DataError(key, f"{path}: not an ESM-2 checkpoint (no 'cfg'; ESM-1 models are not supported)")
    # fair-esm picks its ESM-2 reader by the name's prefix; a renamed local file is still ESM-2 by its cfg.
    core_name = name if name.startswith("esm2") else f"esm2_{name}"
    try:
        with warnings.catch_warnings():
            # Without the regression file fair-esm warns about contacts; the encoder drops the contact head.
            warnings.filterwarnings("ignore", message="Regression weights not found")
            return esm.pretrained.load_model_and_alphabet_core(core_name, model_data, regression)
    except (KeyError, AttributeError, TypeError, RuntimeError) as exc:
        problem = f"fair-esm cannot build ESM-2 from it ({first_line(exc, 200)})"
        raise DataError(key, f"{path}: {problem}") from None


def _regression_beside(path: Path, key: str) -> dict[str, Any] | None:
    regression = path.with_name(f"{path.stem}-contact-regression.pt")
    return read_checkpoint(regression, key) if regression.is_file() else None


def load_local(path: str | Path, key: str = "model.esm_path"):
    """(model, alphabet) from a local fair-esm checkpoint; `<stem>-contact-regression.pt` beside it is used
    when present (the encoder drops the contact head, so it is optional)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(key, f"{path}: no such ESM checkpoint file")
    return _build(path.stem, read_checkpoint(path, key), _regression_beside(path, key), path, key)


def _download(url: str, dst: Path) -> None:
    # torch.hub writes to a temporary file and renames it: an interrupted download leaves no half file.
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dst), progress=True)


def load_by_name(name: str, key: str = "model.esm_model"):
    """(model, alphabet) of the fair-esm ESM-2 model `name`, from the torch hub cache (downloaded there when
    missing and the machine is online)."""
    known = esm2_names()
    if name not in known:
        if "/" in name or name.endswith(".pt"):
            raise DataError(key, f"{name!r} looks like a file: give a local checkpoint as model.esm_path")
        raise DataError(key, f"{name!r} is not an ESM-2 model of fair-esm; one of {', '.join(known)}")
    path = hub_checkpoint(name)
    if not path.is_file():
        url = MODEL_URL.format(name=name)
        where = f"put {path.name} (from {url}) in {path.parent} (the torch hub cache, $TORCH_HOME/hub)"
        if offline():
            raise DataError(key, f"{name} is not in the torch hub cache and HF_HUB_OFFLINE is set: {where}")
        try:
            _download(url, path)
        except OSError as exc:  # URLError, HTTPError and timeouts are OSErrors
            raise DataError(key, f"{name} cannot be downloaded ({first_line(exc, 120)}): {where}") from None
        try:  # fair-esm's own loader wants it beside the model; the encoder does not (no contact head)
            _download(REGRESSION_URL.format(name=name), path.with_name(f"{name}-contact-regression.pt"))
        except OSError:
            pass
    return _build(name, read_checkpoint(path, key), _regression_beside(path, key), path, key)
