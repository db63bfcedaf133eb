"""Ray jobs: `plexlab sweep FILE` (or `fit`) run on a cluster through Ray's job server, listed, followed and
stopped from a laptop or a notebook.

The job's working folder is the experiment file and the files it names with `base:`, nothing else: the code
comes from the nodes' own plexlab (the image or an install), as "Scaling out" in the README says. The job
server is the head's dashboard (`http://HEAD:8265`); with token authentication on (Ray's default) every
request carries the cluster's token as a bearer header, read as Ray reads it (RAY_AUTH_TOKEN, the file
RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token) unless given.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plexlab import job_env, local_ray, schema, tracking, tracking_uri
from plexlab.config import parse_override, set_dotted
from plexlab.config_files import BASE_KEY, read_composed, read_yaml
from plexlab.errors import ConfigError, PlexlabError

ADDRESS_VARIABLE = "RAY_API_SERVER_ADDRESS"  # what Ray's own `ray job` commands read
DEFAULT_TOKEN_FILE = Path.home() / ".ray" / "auth_token"
# A stopped sweep's driver stops its trials and closes their runs before Ray's job server kills it.
STOP_GRACE_S = 120
# Where a job's sweep results live on the driver's node when the file names no absolute storage: the job's
# working folder is temporary, and --resume must find the sweep again.
JOB_STORAGE = "~/plexlab_sweeps"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
METADATA_KEY = "plexlab"  # metadata of a job plexlab submitted: its command, experiment, file, store


class JobError(PlexlabError):
    """The Ray job server cannot be used (not there, not a job server, the token refused) or a job is
    unknown."""


@dataclass(frozen=True)
class Submitted:
    """A job plexlab submitted: its id, what it runs, and the MLflow store its runs go to."""

    job_id: str
    command: str
    experiment: str
    tracking_uri: str


def token(explicit: str | None = None) -> str | None:
    """The cluster's token: the one given, RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, ~/.ray's."""
    if explicit:
        return explicit.strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]) if os.environ.get("RAY_AUTH_TOKEN_PATH") else None
    for candidate in (path, DEFAULT_TOKEN_FILE):
        if candidate is not None and candidate.is_file():
            return candidate.read_text().strip() or None
    return None


def client(address: str | None = None, auth_token: str | None = None) -> Any:
    """Ray's JobSubmissionClient for the job server at `address` (else RAY_API_SERVER_ADDRESS, or an
    http RAY_ADDRESS); a wrong address, a server that is not Ray's or a refused token is one JobError."""
    from ray.job_submission import JobSubmissionClient

    env_address = os.environ.get("RAY_ADDRESS", "")
    address = address or os.environ.get(ADDRESS_VARIABLE) or (env_address if "://" in env_address else None)
    if not address:
        raise JobError(
            f"no Ray job server named: pass --address http://HEAD:8265 (the head's dashboard) or set"
            f" {ADDRESS_VARIABLE}"
        )
    if "://" not in address:
        address = f"http://{address}"
    found = token(auth_token)
    headers = {"Authorization": f"Bearer {found}"} if found else {}
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as exc:  # ConnectionError, 404 (no job API), AuthenticationError: one line each
        raise JobError(f"Ray job server at {address}: {_problem(exc, found is not None)}") from None


def _problem(exc: Exception, had_token: bool) -> str:
    text = " ".join(str(exc).split())
    if "Authentication" in type(exc).__name__ or "authentication" in text.lower():
        where = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token or --token-file"
        return f"refused the token (give the cluster's: {where})" if had_token else f"needs a token ({where})"
    if "404" in text:
        return "answers, but is not a Ray dashboard with the job API (give the head's dashboard port, 8265)"
    if isinstance(exc, ConnectionError):
        return "cannot be reached (is the head's dashboard running there? tunnel its port, never open it)"
    return text[:300]


def _call(what: str, fn: Any, *args: Any) -> Any:
    """A job-server call whose failure (an unknown job id, the server gone) is one JobError."""
    try:
        return fn(*args)
    except Exception as exc:
        text = " ".join(str(exc).split())
        if "does not exist" in text or "404" in text:
            raise JobError(f"{what}: no such job on this cluster") from None
        raise JobError(f"{what}: {text[:300]}") from None


def read_file(config: str | Path, overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    """The experiment file with its bases and overrides applied, read but not validated: its data paths
    are the cluster's, which this machine may not see. The cluster's `plexlab` validates it."""
    path = Path(config)
    raw, _ = read_composed(path)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value, "--set")
    if not isinstance(raw.get("name"), str):
        raise ConfigError(path, "name", "missing: the experiment's name")
    return path, raw


def job_tracking_uri(path: Path, raw: dict[str, Any]) -> str:
    """The store the job's runs go to and the launcher reads: the file's or MLFLOW_TRACKING_URI. The
    embedded default (./mlflow.db) would be a file in the job's temporary folder on the head."""
    uri = (raw.get("tracking") or {}).get("uri") or tracking_uri.USER_URI
    relative = uri is not None and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////")
    if uri is None or relative or "://" not in uri:
        raise ConfigError(
            path,
            "tracking.uri",
            "a job needs a tracking store this machine and the cluster both reach: an MLflow server"
            " (http://...) or a SQLite file on a shared filesystem (sqlite:////abs/mlflow.db);"
            " set tracking.uri or MLFLOW_TRACKING_URI",
        )
    return uri


def _files(path: Path) -> list[Path]:
    """The experiment file and every file its `base:` chain names."""
    found = [path.resolve()]
    while isinstance(base := read_yaml(found[-1]).get(BASE_KEY), str):
        found.append((found[-1].parent / base).resolve())
        if found[-1] in found[:-1]:
            break  # a cycle: read_composed has refused it already
    return found


def working_folder(path: Path, into: Path) -> Path:
    """Copy the experiment file and its bases into `into`, keeping their relative places; returns the
    experiment file's path relative to `into` (what the job's command names)."""
    files = _files(path)
    root = Path(os.path.commonpath([f.parent for f in files]))
    for file in files:
        target = into / file.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
    return files[0].relative_to(root)


def submit(
    config: str | Path,
    overrides: list[str] | None = None,
    *,
    address: str | None = None,
    auth_token: str | None = None,
    resume: bool = False,
    storage: str | None = None,
) -> Submitted:
    """Submit `plexlab sweep FILE` (a file without a sweep section: `plexlab fit FILE`) as a Ray job."""
    overrides = list(overrides or [])
    path, raw = read_file(config, overrides)
    uri = job_tracking_uri(path, raw)
    jobs = client(address, auth_token)  # before anything is packed: a wrong address fails first
    command = "sweep" if raw.get("sweep") else "fit"
    job_id = f"plexlab-{raw['name']}-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="plexlab-job-") as tmp:
        relative = working_folder(path, Path(tmp))
        words = ["plexlab", command, str(relative), *(w for o in overrides for w in ("--set", o))]
        if command == "fit":  # a sweep's driver tags its parent run; a fit's run takes the file's tags
            tags = {**((raw.get("tracking") or {}).get("tags") or {}), schema.JOB: job_id}
            words += ["--set", f"tracking.tags={json.dumps(tags)}"]
        if command == "sweep":
            where = storage or (raw.get("sweep") or {}).get("storage") or JOB_STORAGE
            absolute = "://" in where or where.startswith(("/", "~"))
            words += ["--storage", where if absolute else JOB_STORAGE]
        if resume:
            words += ["--resume"] if command == "sweep" else ["--resume", "last"]
        env = {
            **local_ray.forwarded_env(),
            job_env.JOB_ID_VARIABLE: job_id,
            "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S),
            # The driver's ray.init names some of these variables again (local_ray): Ray refuses the
            # repetition unless told to merge the two runtime envs.
            "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1",
        }
        metadata = {
            METADATA_KEY: command,
            "experiment": raw["name"],
            "file": str(relative),
            "tracking_uri": tracking.redact(uri),
        }
        _call(
            f"submitting {path}",
            lambda: jobs.submit_job(
                entrypoint=shlex.join(words),
                submission_id=job_id,
                runtime_env={"working_dir": tmp, "env_vars": env},
                metadata=metadata,
            ),
        )
    return Submitted(job_id, command, raw["name"], uri)


def list_jobs(address: str | None = None, auth_token: str | None = None) -> list[Any]:
    """The cluster's jobs plexlab submitted, newest first (Ray's JobDetails)."""
    found = _call("listing jobs", client(address, auth_token).list_jobs)
    ours = [j for j in found if METADATA_KEY in (j.metadata or {})]
    return sorted(ours, key=lambda j: j.start_time or 0, reverse=True)


def logs(
    job_id: str, address: str | None = None, auth_token: str | None = None, *, follow: bool = False
) -> Iterator[str]:
    """The job's output so far; with `follow`, as it comes, until the job ends."""
    jobs = client(address, auth_token)
    if not follow:
        yield _call(f"job {job_id}", jobs.get_job_logs, job_id)
        return
    _call(f"job {job_id}", jobs.get_job_info, job_id)  # an unknown id is an error, not an empty stream
    loop = asyncio.new_event_loop()
    stream = jobs.tail_job_logs(job_id)
    try:
        while True:
            try:
                yield loop.run_until_complete(stream.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(stream.aclose())
        loop.close()


def status(job_id: str, address: str | None = None, auth_token: str | None = None) -> str:
    """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    return str(_call(f"job {job_id}", client(address, auth_token).get_job_status, job_id).value)


def wait(
    job_id: str,
    address: str | None = None,
    auth_token: str | None = None,
    *,
    timeout: float | None = None,
    every: float = 2.0,
) -> str:
    """Wait until the job ends; returns its final status (or the current one after `timeout` seconds)."""
    jobs = client(address, auth_token)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        now = str(_call(f"job {job_id}", jobs.get_job_status, job_id).value)
        if now in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
            return now
        time.sleep(every)


def stop(
    job_id: str, address: str | None = None, auth_token: str | None = None, *, timeout: float = 180
) -> str:
    """Stop the job (SIGTERM to its driver, which ends its runs and saves the sweep for --resume; Ray
    kills it after STOP_GRACE_S) and wait for it to end; returns its final status."""
    jobs = client(address, auth_token)
    _call(f"job {job_id}", jobs.stop_job, job_id)
    return wait(job_id, address, auth_token, timeout=timeout, every=1.0)
