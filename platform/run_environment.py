"""What a run ran on, as artifacts a person (or a rerun) can read: `environment/requirements.txt` (every
installed distribution and its version) and `environment/system.json` (Python, OS, torch, CUDA, cuDNN, GPUs
and driver, CPUs, host, Ray, MLflow and Lightning versions, git commit and dirty state of the working
directory's repository and of plexlab's own source tree, and digests of the data files the data module read).

Data digests are sha256: of the file for a file, of every file's relative name and digest for a folder. A
file over `FULL_DIGEST_BYTES` is digested cheaply from its size and its first and last MiB (`sha256-sampled`),
so a large data set costs two MiB per file to describe. The parts that cannot change within a process are
computed once per process (a Ray worker runs many trials); per-file digests are kept by (path, size, mtime).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from plexlab import registry, schema

FULL_DIGEST_BYTES = 8 << 20
SAMPLE_BYTES = 1 << 20
FOLDER = "environment"


def requirements() -> str:
    """`name==version` of every installed distribution, sorted, one a line (pip's freeze format)."""
    return "".join(f"{name}=={version}\n" for name, version in _distributions())


@functools.cache
def _distributions() -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(name, dist.version)
    return tuple(sorted(found.items(), key=lambda item: item[0].lower()))


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def machine() -> dict[str, Any]:
    """Python, OS, CPUs, host, the libraries that train and track, the GPUs: the same all process long."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "gpu_driver": _gpu_driver() if cuda else None,
        **{name: _version(name) for name in ("lightning", "ray", "mlflow", "plexlab")},
    }


def _gpu_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return str(pynvml.nvmlSystemGetDriverVersion())
    except Exception:  # not installed, or NVML not usable: ask nvidia-smi
        pass
    if shutil.which("nvidia-smi") is None:
        return None
    out = _command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], Path.cwd())
    return out.splitlines()[0].strip() if out else None


def _command(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(folder: Path) -> dict[str, Any] | None:
    """The commit of the git repository holding `folder` and whether tracked files differ from it (untracked
    files do not count); None without git or outside a repository."""
    commit = _command(["git", "rev-parse", "HEAD"], folder)
    if not commit:
        return None
    status = _command(["git", "status", "--porcelain", "--untracked-files=no"], folder)
    top = _command(["git", "rev-parse", "--show-toplevel"], folder)
    return {
        "commit": commit.strip(),
        "dirty": None if status is None else bool(status.strip()),
        "root": top.strip() if top else None,
    }


@functools.cache
def _source_git() -> dict[str, Any] | None:
    return git_state(Path(__file__).resolve().parent)


_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> tuple[str, str]:
    """(method, hex digest) of one file; see the module docstring for big files."""
    info = path.stat()
    method = "sha256" if info.st_size <= FULL_DIGEST_BYTES else "sha256-sampled"
    key = (str(path), info.st_size, info.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with path.open("rb") as f:
            if method == "sha256":
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            else:
                h.update(str(info.st_size).encode())
                h.update(f.read(SAMPLE_BYTES))
                f.seek(info.st_size - SAMPLE_BYTES)
                h.update(f.read(SAMPLE_BYTES))
        _digests[key] = h.hexdigest()
    return method, _digests[key]


def path_digest(path: Path) -> dict[str, Any]:
    """A file's digest, or a folder's over its files' relative names and digests."""
    if path.is_file():
        method, digest = file_digest(path)
        return {"path": str(path), "kind": "file", "method": method, "sha256": digest}
    h, methods, count = hashlib.sha256(), set(), 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        method, digest = file_digest(file)
        h.update(f"{file.relative_to(path).as_posix()}\0{digest}\n".encode())
        methods.add(method)
        count += 1
    method = "sha256-sampled" if "sha256-sampled" in methods else "sha256"
    return {"path": str(path), "kind": "folder", "files": count, "method": method, "sha256": h.hexdigest()}


def data_digests(data_name: str, data_args: dict[str, Any]) -> dict[str, Any]:
    """Digests of the data module's input paths (its arguments annotated as paths that must exist)."""
    from plexlab.config import path_role

    params = registry.init_parameters(registry.datamodule_class(data_name))
    out: dict[str, Any] = {}
    for key, value in data_args.items():
        if key in params and path_role(params[key].annotation) == "input" and value:
            path, name = Path(value), f"data.{key}"
            try:
                out[name] = path_digest(path) if path.exists() else {"path": str(path), "missing": True}
            except OSError as exc:  # unreadable: the data module says so when it reads; the run still starts
                out[name] = {"path": str(path), "error": str(exc)[:300]}
    return out


def describe(cfg: Any) -> dict[str, Any]:
    """system.json's content for a run of `cfg` (an ExperimentConfig)."""
    return {
        **machine(),
        "git": {"working_directory": git_state(Path.cwd()), "plexlab_source": _source_git()},
        "data": data_digests(cfg.data_name, cfg.data_args()),
    }


def tags(system: dict[str, Any]) -> dict[str, str]:
    """The run tags that name the stack: torch, CUDA (`none` on CPU builds) and the GPU model (`none`)."""
    gpus = system.get("gpus") or []
    return {
        schema.TORCH_VERSION: system["torch"],
        schema.CUDA_VERSION: system.get("cuda") or "none",
        schema.GPU_MODEL: ", ".join(sorted(set(gpus))) if gpus else "none",
    }


def log(run: Any, cfg: Any) -> float:
    """Log both artifacts and the stack tags into `run` (a tracking.Run); returns the seconds it took."""
    started = time.perf_counter()
    system = describe(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "requirements.txt").write_text(requirements())
        system["capture_seconds"] = round(time.perf_counter() - started, 3)
        (folder / "system.json").write_text(json.dumps(system, indent=2, sort_keys=True))
        run.log_artifact(folder, FOLDER)
    run.set_tags(tags(system))
    return time.perf_counter() - started
