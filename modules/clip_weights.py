"""Pretrained CLIP for E2, by Hugging Face model name (transformers' own cache) or from a local folder.

A name ("openai/clip-vit-base-patch32") loads through `CLIPModel.from_pretrained`, which downloads into the
Hugging Face cache (`$HF_HOME/hub`, by default `~/.cache/huggingface/hub`) where the network allows. With
`HF_HUB_OFFLINE=1`, or when the hub cannot be reached, only the cache is read (`local_files_only=True`);
a model that is not there is one line naming the model and the cache folder. Weights are safetensors or
torch files that transformers reads with `weights_only=True`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from plexlab.datamodules.errors import DataError, first_line

if TYPE_CHECKING:
    from transformers import CLIPModel

_OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}


def hf_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _OFFLINE_VALUES or constants.HF_HUB_OFFLINE


def hf_cache() -> Path:
    """The folder transformers reads and downloads models into."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def clip_by_name(name: str, key: str = "model.clip_model") -> CLIPModel:
    """A pretrained CLIPModel by hub name: from the cache, downloaded there when online."""
    from transformers import CLIPModel

    if Path(name).expanduser().is_dir():
        raise DataError(key, f"{name!r} is a local folder: give it as model.clip_path")
    if not hf_offline():
        try:
            return CLIPModel.from_pretrained(name)
        except OSError as exc:  # hub unreachable, or no such model there: the cache may still hold it
            reason = f"the hub could not serve it ({first_line(exc, 160)})"
    else:
        reason = "HF_HUB_OFFLINE is set"
    try:
        return CLIPModel.from_pretrained(name, local_files_only=True)
    except OSError:
        raise DataError(
            key,
            f"{name} is not in the Hugging Face cache {hf_cache()} and {reason}: run `hf download {name}` "
            "where the network allows (HF_HOME chooses the cache), or give a local folder as model.clip_path",
        ) from None


def clip_from_folder(path: str, key: str = "model.clip_path") -> CLIPModel:
    """A CLIPModel saved with `save_pretrained` in a local folder (nothing downloads)."""
    from transformers import CLIPModel

    if not Path(path).is_dir():
        raise DataError(key, f"{path}: no such local CLIP model folder")
    try:
        return CLIPModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(key, f"{path}: not a CLIP model folder ({first_line(exc, 160)})") from None
