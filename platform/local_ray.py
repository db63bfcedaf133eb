"""Starting Ray for a sweep: join the cluster the user names, or start a private, locked-down one here.

A local Ray runs code for anyone who can reach its ports, so it starts only with token authentication (Ray's
default, refused when RAY_AUTH_MODE turns it off unless the user insists), its dashboard on 127.0.0.1, its
files private to the user and its token file mode 600. Trials of a local Ray inherit this process's
environment; to a cluster only non-secret MLflow settings are forwarded (credentials stay on the nodes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import ray
from plexlab.errors import PlexlabError

# A stopped trial closes its MLflow run after Tune asks it to stop; give that time before an actor is reused
# (Tune's default is 2 s).
TRIAL_ENV = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "60"}
SECRET_MARKERS = ("PASSWORD", "TOKEN", "SECRET", "KEY", "CREDENTIAL")
TOKEN_FILE = Path.home() / ".ray" / "auth_token"


class InsecureRayError(PlexlabError):
    """Local Ray would start without authentication."""


def start(address: str | None, *, insecure: bool = False) -> bool:
    """Join the given cluster (or RAY_ADDRESS), else start Ray here. Returns whether this call started Ray
    (and so should stop it)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        env = {**TRIAL_ENV, **forwarded_env()}
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
        return True
    mode = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if mode != "token" and not insecure:
        raise InsecureRayError(
            f"RAY_AUTH_MODE={mode} would start a local Ray that runs code for anyone who reaches its ports;"
            " unset it (token authentication is the default) or pass --insecure-local-ray"
        )
    with _private_files():
        # "local", not None: without it Ray joins the last cluster `ray start` made on this machine, even a
        # stopped one (it hangs on the dead GCS); joining a cluster is for --address / RAY_ADDRESS alone.
        ray.init(
            address="local",
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env={"env_vars": dict(TRIAL_ENV)},
            log_to_driver=False,
        )
    if TOKEN_FILE.exists():
        TOKEN_FILE.chmod(0o600)
    return True


def forwarded_env() -> dict[str, str]:
    """The MLflow settings trials on other nodes need (the server, TLS options), never a credential: Ray
    writes runtime_env into logs that other users of the nodes can read."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith("MLFLOW_") and not any(marker in k for marker in SECRET_MARKERS) and "@" not in v
    }


@contextlib.contextmanager
def _private_files() -> Iterator[None]:
    """Ray's session files, logs and token, created while Ray starts, readable by this user only (Ray's
    processes inherit the mask)."""
    before = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(before)
