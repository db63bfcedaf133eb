"""Handles on a sweep that runs elsewhere, for a notebook: `api.sweep(..., wait=False)` (this machine) and
`api.submit(...)` (a Ray cluster) return one, with `status()`, `best()`, `wait()` and `stop()`.

A local sweep is `plexlab sweep FILE` in a process of its own (its own session), so the notebook's kernel
never hosts Ray's driver and `stop()` is a SIGTERM the sweep turns into a clean stop (see sweep_stop). Both
handles read `best()` from MLflow, from the runs tagged with the launch's job id, not from Tune's files: it
works the same for a sweep on a cluster, finished or still running.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from plexlab import contract, job_env, jobs, registry, schema, tracking
from plexlab.config import set_dotted
from plexlab.errors import ConfigError

LOCAL_STOP_GRACE_S = 120


@dataclass(frozen=True)
class Best:
    """The best trial so far of a launched sweep (or a launched fit's run), as MLflow holds it."""

    config: dict[str, Any]  # the trial's resolved config (its run's params, nested)
    metric: str
    value: float | None
    checkpoint: str | None  # the best checkpoint's artifact: a local path for a local store, else a URI
    run_id: str  # the best trial's run (a fit's own run)
    parent_run_id: str | None  # the sweep's parent run; None for a fit
    finished: bool  # the parent (or fit) run ended FINISHED: this is the sweep's final answer


class Launch(Protocol):
    """What a notebook holds for a sweep (or fit) running elsewhere."""

    job_id: str

    def status(self) -> str:
        """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
        ...

    def best(self) -> Best | None:
        """The best trial so far, from MLflow; None before any trial has reported."""
        ...

    def wait(self, timeout: float | None = None) -> str:
        """Block until it ends (or `timeout` seconds pass); returns the status."""
        ...

    def stop(self) -> str:
        """Stop it so that no run is left RUNNING and `resume` continues it; returns the status."""
        ...


class _Tracked:
    """The MLflow side both handles share: the runs tagged with the job id."""

    job_id: str
    experiment: str
    tracking_uri: str

    def best(self) -> Best | None:
        return best_of_job(self.tracking_uri, self.experiment, self.job_id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.job_id} ({self.experiment}): {self.status()}>"

    def status(self) -> str:
        raise NotImplementedError


def best_of_job(uri: str, experiment: str, job_id: str) -> Best | None:
    """The best run so far of a job: a sweep's best trial (by its best epoch, a repeated one by its mean),
    or a fit's run."""
    found = tracking.search(uri, experiment, {schema.JOB: job_id}, limit=1)
    if not found:
        return None
    top = found[0]
    metric, mode = _objective(top)
    if top.tags.get(schema.KIND) != schema.SWEEP_KIND:
        return _best(uri, top, metric, _score(uri, top, metric, mode), None, top.status == "FINISHED")
    children = tracking.search(uri, experiment, {schema.PARENT_RUN_ID: top.run_id})
    scored = [(s, c) for c in children if (s := _score(uri, c, metric, mode)) is not None]
    if not scored:
        return None
    value, child = max(scored, key=lambda p: p[0]) if mode == "max" else min(scored, key=lambda p: p[0])
    return _best(uri, child, metric, value, top.run_id, top.status == "FINISHED")


def _objective(run: tracking.RunRecord) -> tuple[str, str]:
    """The sweep's metric and mode (its params), else the model's primary metric."""
    metric, mode = run.params.get("sweep.metric", "None"), run.params.get("sweep.mode", "None")
    if metric != "None":  # as the sweep ranks: a metric of the file's own is maximized unless told
        return metric, mode if mode != "None" else "max"
    primary = contract.primary(registry.model_class(run.tags[schema.MODEL]))
    return primary[0], mode if mode != "None" else primary[1]


def _score(uri: str, run: tracking.RunRecord, metric: str, mode: str) -> float | None:
    for key in (schema.mean(metric), schema.best(metric)):
        if key in run.metrics:
            return run.metrics[key]
    history = [value for _, value in tracking.Run.attach(uri, run.run_id).history(metric)]
    if not history:
        return None
    return max(history) if mode == "max" else min(history)


def _value(text: str) -> Any:
    """A param as logged (str of the value) back to the value, as far as YAML reads it."""
    if text == "None":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _best(
    uri: str, run: tracking.RunRecord, metric: str, value: float | None, parent: str | None, done: bool
) -> Best:
    config: dict[str, Any] = {}
    for key, text in run.params.items():
        set_dotted(config, key, _value(text))
    attached = tracking.Run.attach(uri, run.run_id)
    checkpoint = None
    if attached.has_artifacts("checkpoints"):
        root = attached.client.get_run(run.run_id).info.artifact_uri
        checkpoint = f"{root}/checkpoints/best.ckpt"
        if checkpoint.startswith("file://"):
            checkpoint = checkpoint.removeprefix("file://")
    return Best(config, metric, value, checkpoint, run.run_id, parent, done)


class LocalSweep(_Tracked):
    """`plexlab sweep FILE` on this machine, in a process (and session) of its own; its output goes to
    `log`."""

    def __init__(
        self, config: str | Path, overrides: list[str], flags: list[str], *, allow_tracking_uri: bool = False
    ) -> None:
        path, raw = jobs.read_file(config, overrides)
        file_uri = (raw.get("tracking") or {}).get("uri")
        self.experiment = str(raw["name"])
        self.tracking_uri = tracking.trusted_uri(file_uri, str(path), allow_other_host=allow_tracking_uri)
        self.job_id = f"local-{self.experiment}-{secrets.token_hex(4)}"
        self.log = Path(tempfile.mkdtemp(prefix="plexlab-sweep-")) / "sweep.log"
        self._stopped = False
        command = [sys.executable, "-m", "plexlab.cli", "sweep", str(config), *flags]
        command += [w for o in overrides for w in ("--set", o)]
        env = {**os.environ, job_env.JOB_ID_VARIABLE: self.job_id}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def status(self) -> str:
        code = self.process.poll()
        if code is None:
            return "RUNNING"
        if self._stopped:
            return "STOPPED"
        return "SUCCEEDED" if code == 0 else "FAILED"

    def logs(self) -> str:
        """The sweep's output so far."""
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float | None = None) -> str:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.status()

    def stop(self, grace: float = LOCAL_STOP_GRACE_S) -> str:
        """SIGTERM to the driver alone (its private Ray shuts down with it); after `grace` seconds, SIGKILL
        to its whole session."""
        if self.process.poll() is None:
            self._stopped = True
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        return self.status()


class ClusterJob(_Tracked):
    """A job `api.submit` started on a Ray cluster, through its job server."""

    def __init__(self, submitted: jobs.Submitted, address: str | None, auth_token: str | None) -> None:
        self.job_id = submitted.job_id
        self.experiment = submitted.experiment
        self.tracking_uri = submitted.tracking_uri
        self.command = submitted.command
        self._address, self._token = address, auth_token

    def status(self) -> str:
        return jobs.status(self.job_id, self._address, self._token)

    def logs(self) -> str:
        """The job's output so far."""
        return "".join(jobs.logs(self.job_id, self._address, self._token))

    def wait(self, timeout: float | None = None) -> str:
        return jobs.wait(self.job_id, self._address, self._token, timeout=timeout)

    def stop(self) -> str:
        return jobs.stop(self.job_id, self._address, self._token)


def _sets(overrides: dict[str, Any]) -> list[str]:
    """Dotted-key overrides as `--set KEY=VALUE` words (JSON is YAML: the value reads back the same)."""
    return [f"{key}={json.dumps(value, default=str)}" for key, value in overrides.items()]


def local(
    config: str | Path,
    overrides: dict[str, Any],
    *,
    address: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    extend: int | None = None,
    allow_tracking_uri: bool = False,
    insecure_local_ray: bool = False,
) -> LocalSweep:
    """`api.sweep(..., wait=False)`: the sweep in a process of its own, with the same options."""
    if not isinstance(config, str | Path):
        raise ConfigError(str(config)[:80], "", "a sweep that does not wait needs an experiment file's path")
    flags = [*(["--address", address] if address else []), *(["--storage", storage] if storage else [])]
    flags += ["--resume"] if resume else []
    flags += ["--extend", str(extend)] if extend is not None else []
    flags += ["--allow-tracking-uri"] if allow_tracking_uri else []
    flags += ["--insecure-local-ray"] if insecure_local_ray else []
    return LocalSweep(config, _sets(overrides), flags, allow_tracking_uri=allow_tracking_uri)


def submit(
    config: str | Path,
    overrides: dict[str, Any],
    *,
    address: str | None = None,
    auth_token: str | None = None,
    resume: bool = False,
    storage: str | None = None,
) -> ClusterJob:
    """`api.submit`: the file's sweep (or fit) as a job on the Ray cluster whose job server is `address`."""
    submitted = jobs.submit(
        config, _sets(overrides), address=address, auth_token=auth_token, resume=resume, storage=storage
    )
    return ClusterJob(submitted, address, auth_token)


def job_rows(address: str | None = None, auth_token: str | None = None) -> list[dict[str, Any]]:
    """`plexlab jobs`: the cluster's plexlab jobs, newest first, with the best metric so far from MLflow."""
    rows = []
    for job in jobs.list_jobs(address, auth_token):
        meta = job.metadata or {}
        uri, experiment = meta.get("tracking_uri", ""), meta.get("experiment", "")
        best = None
        # A SQLite store that is not on this machine is not read: MLflow would create an empty one.
        reachable = not uri.startswith("sqlite:") or Path(uri.removeprefix("sqlite:///")).exists()
        if uri and reachable:
            best = best_of_job(uri, experiment, job.submission_id)
        started = time.localtime((job.start_time or 0) / 1000)
        rows.append(
            {
                "job": job.submission_id,
                "status": str(getattr(job.status, "value", job.status)),
                "command": meta.get(jobs.METADATA_KEY, ""),
                "experiment": experiment,
                "started": time.strftime("%Y-%m-%d %H:%M:%S", started) if job.start_time else "",
                "best so far": f"{best.metric} {best.value:.4g}" if best and best.value is not None else "",
            }
        )
    return rows
