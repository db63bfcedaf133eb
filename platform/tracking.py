"""MLflow, in one place: where runs go, one run per fit, and how a run ends.

The embedded default is a SQLite file and an artifact folder in the working directory (nothing to start);
a server (`http(s)://...`) is checked before any training starts. A run is created with the client and handed
to Lightning's MLFlowLogger by id, so that sweep trials can be child runs of the sweep's parent run.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from lightning.pytorch.utilities.exceptions import SIGTERMException
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from plexlab import environment_vars, schema
from plexlab.datamodules.errors import first_line
from plexlab.errors import TrackingError
from plexlab.tracking_uri import artifact_root, redact, resolve_uri, trusted_uri  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit for a param value


def check(uri: str) -> None:
    """Fail fast, before training, when the tracking store cannot be reached or refuses the credentials."""
    if not uri.startswith(("http://", "https://")):
        return
    with one_quick_try():
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as exc:  # connection refused, 401, TLS, ...: all mean "cannot track here"
            raise TrackingError(
                f"MLflow tracking server {redact(uri)} is not usable: {first_line(exc, 300)}"
            ) from None


def one_quick_try(timeout_s: int = 10) -> contextlib.AbstractContextManager[None]:
    """MLflow requests made in the block try once, for at most `timeout_s` (its default retries with backoff
    hold a call to a server that is gone for minutes)."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    return environment_vars.temporarily(quick)


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of the named experiment, created (with local artifacts for the embedded store) if missing."""
    found = client.get_experiment_by_name(name)
    kind = {schema.EXPERIMENT_KIND: schema.MODEL_TRAINING}  # the dashboard's model-training view
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if schema.EXPERIMENT_KIND not in found.tags:  # an experiment made before plexlab set it
            client.set_experiment_tag(found.experiment_id, schema.EXPERIMENT_KIND, schema.MODEL_TRAINING)
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(uri), tags=kind)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent trial
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class Run:
    """One MLflow run that a fit, a test or a sweep writes to; `end` sets how it finished."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri

    @classmethod
    def attach(cls, uri: str, run_id: str) -> Run:
        """An existing run by id (a DDP trial's rank 0 writes into the run its driver created)."""
        return cls(MlflowClient(uri), run_id, uri)

    def record(self) -> RunRecord:
        """The run as it is stored now."""
        return RunRecord.of(self.client.get_run(self.run_id))

    def reopen(self) -> None:
        """Mark a run that continues (a resumed trial or sweep) RUNNING again."""
        self.client.update_run(self.run_id, status="RUNNING")

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric, as logged."""
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

    def has_artifacts(self, folder: str) -> bool:
        return bool(self.client.list_artifacts(self.run_id, folder))

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params; a resumed run keeps its first values (MLflow forbids changing a param), and a value
        that did change (a PBT mutation) is logged as a metric `changed/<key>` instead."""
        existing = self.client.get_run(self.run_id).data.params
        changed = {k: v for k, v in params.items() if k in existing and existing[k] != _param_text(v)}
        numeric = {f"changed/{k}": v for k, v in changed.items() if isinstance(v, int | float)}
        self.log_metrics(numeric)
        items = [Param(k, _param_text(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), subdir)
        else:
            self.client.log_artifact(self.run_id, str(path), subdir)

    def logger(self, experiment_name: str) -> Any:
        """Lightning's MLFlowLogger writing into this run asynchronously (see run_logger)."""
        from plexlab import run_logger

        return run_logger.make(self.run_id, self.uri, experiment_name)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


@dataclass(frozen=True)
class RunRecord:
    """A stored run, read back: what the tables, resumed sweeps and the sweep's safety net look at."""

    run_id: str
    name: str
    status: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]

    @classmethod
    def of(cls, run: Any) -> RunRecord:
        info, data = run.info, run.data
        return cls(
            info.run_id, info.run_name, info.status, info.start_time, data.tags, data.params, data.metrics
        )


def search(
    uri: str, experiment: str, tags: dict[str, str] | None = None, limit: int = 10000
) -> list[RunRecord]:
    """The experiment's runs carrying all the given tags, newest first (none if the experiment is new)."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items())
    runs = client.search_runs([found.experiment_id], query, max_results=limit, order_by=["start_time DESC"])
    return [RunRecord.of(r) for r in runs]


def find_experiment_id(uri: str, name: str) -> str | None:
    found = MlflowClient(uri).get_experiment_by_name(name)
    return None if found is None else found.experiment_id


def has_experiment(uri: str, name: str) -> bool:
    return MlflowClient(uri).get_experiment_by_name(name) is not None


def experiment_names(uri: str, limit: int = 50) -> list[str]:
    return [e.name for e in MlflowClient(uri).search_experiments(max_results=limit)]


def _param_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def create_run(
    uri: str,
    experiment: str,
    *,
    run_name: str | None = None,
    tags: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> Run:
    """A new RUNNING run in the named experiment (a child run when parent_run_id is given).

    Without `run_name` the name is the start time plus a random suffix: MLflow's own generated names come
    from Python's global RNG, which the seeded runs reset, so every run of a seed got the same name.
    """
    run_name = run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    client = MlflowClient(uri)
    all_tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
    all_tags[schema.RUN_NAME] = run_name
    if parent_run_id:
        all_tags[schema.PARENT_RUN_ID] = parent_run_id
    run = client.create_run(experiment_id(client, experiment, uri), tags=all_tags, run_name=run_name)
    return Run(client, run.info.run_id, uri)


def find_run(uri: str, experiment: str, tags: dict[str, str]) -> Run | None:
    """The newest run of the experiment carrying all the given tags (a resumed trial's run), if any."""
    runs = search(uri, experiment, tags, limit=1)
    return Run.attach(uri, runs[0].run_id) if runs else None


@contextlib.contextmanager
def ending(run: Run, *, sigterm_is_stop: bool = False) -> Iterator[Run]:
    """End the run FINISHED, FAILED on an exception, KILLED on Ctrl-C or SIGTERM; a sweep scheduler's stop
    (SystemExit) is a normal end.

    Ray Tune stops a trial by raising SystemExit inside its report call, so code after `trainer.fit()`
    never runs: closing here keeps stopped trials from showing as FAILED or staying RUNNING. Lightning turns
    SIGTERM into a SystemExit subclass: outside a sweep that is a cluster scheduler's preemption or
    `scancel`, a run cut short; inside a trial (`sigterm_is_stop`) it is also how Ray stops the trial.
    """
    try:
        yield run
    except SystemExit as exc:
        if isinstance(exc, SIGTERMException) and not sigterm_is_stop:
            _quietly(run.set_tags, {schema.ERROR: "terminated by SIGTERM"})
            _quietly(run.end, "KILLED")
        else:
            _quietly(run.set_tags, {schema.STOPPED: "stopped early by the scheduler"})
            _quietly(run.end, "FINISHED")
        raise
    except BaseException as exc:
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        _quietly(run.set_tags, {schema.ERROR: reason[:5000]})
        _quietly(run.end, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    else:
        run.end("FINISHED")


@contextlib.contextmanager
def failures_named(uri: str) -> Iterator[None]:
    """An MLflow failure mid-run (server gone, disk full) becomes one line naming the store."""
    try:
        yield
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(
            f"MLflow tracking at {redact(uri)} failed during the run: {first_line(exc, 300)}"
        ) from exc


def _quietly(fn: Any, *args: Any) -> None:
    """Best effort while another exception is on its way out: never hide it behind a tracking error, nor hold
    it for minutes on a server (MLflow's retries; ending a run first drains its queued writes): one try, at
    most 5 s. A local store is waited for: it answers, if slowly on a busy machine."""
    failed: list[Exception] = []

    def attempt() -> None:
        try:
            with one_quick_try(timeout_s=5):
                fn(*args)
        except Exception as exc:  # one line: the error on its way out is the one to read
            failed.append(exc)

    worker = threading.Thread(target=attempt, daemon=True, name="plexlab-run-update")
    worker.start()
    worker.join(5.0 if str(getattr(getattr(fn, "__self__", None), "uri", "")).startswith("http") else None)
    if worker.is_alive() or failed:
        reason = first_line(failed[0], 300) if failed else "no answer in 5 s"
        log.warning("could not update the MLflow run: %s", reason)


def metric_history(run: Run, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) pairs of each metric, as logged."""
    return {k: run.history(k) for k in keys}
