"""Where runs go: the tracking URI a run uses, resolved, and refused where it would send the user's MLflow
credentials to someone else's server."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from plexlab.errors import ConfigError

__all__ = ["artifact_root", "redact", "resolve_uri", "trusted_uri"]

EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "mlartifacts"


# The user's setting, read once: mlflow.set_tracking_uri (which Lightning's logger calls) rewrites the
# variable, and a later run in the same process must not inherit an earlier run's store through it.
USER_URI = os.environ.get("MLFLOW_TRACKING_URI") or None


CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def trusted_uri(file_uri: str | None, source: str, *, allow_other_host: bool = False) -> str:
    """The tracking URI for a run whose experiment file (or `--set`) may name one, resolved.

    Experiment files are shared, and MLflow sends the credentials in the environment to whatever server the
    URI names: a file's server on another host than MLFLOW_TRACKING_URI's, or any server while credentials
    are set and the user named none, is refused unless the user allows it (`--allow-tracking-uri`).
    """
    if file_uri and not allow_other_host and file_uri.startswith(("http://", "https://")):
        theirs, ours = _host(file_uri), _host(USER_URI) if USER_URI else None
        has_credentials = any(os.environ.get(k) for k in CREDENTIAL_VARIABLES)
        if (ours is not None and theirs != ours) or (ours is None and has_credentials):
            mine = f"MLFLOW_TRACKING_URI names {ours}" if ours else "MLflow credentials are set"
            raise ConfigError(
                source,
                "tracking.uri",
                f"{redact(file_uri)} is on {theirs}, but {mine}; credentials go only to your own server:"
                " pass --allow-tracking-uri to send runs there",
            )
    return resolve_uri(file_uri)


def _host(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def redact(uri: str) -> str:
    """A URI without its `user:password@` part, for params, tags, logs and messages."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def resolve_uri(uri: str | None, cwd: Path | None = None) -> str:
    """The tracking URI to use, made absolute so that trials running in other directories share it."""
    uri = uri or USER_URI
    base = (cwd or Path.cwd()).resolve()
    if uri is None:
        return f"sqlite:///{base / EMBEDDED_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside the embedded SQLite file, else the server decides."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / EMBEDDED_ARTIFACTS).as_uri()
    return None
