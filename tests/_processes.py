"""Processes the tests start (MLflow servers, Ray nodes, sweep drivers): ports, waiting, stopping.

Everything is started in its own process group on 127.0.0.1 and stopped by its pid and group, never by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    every: float = 1.0,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> Any:
    """The condition's first truthy value, polled until the timeout. Fails at once if `process` exits first,
    ending the message with its output (the tail of `log`, or its piped stderr), so a CI log shows why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            output = log_tail(log) if log else _stderr_tail(process)
            raise AssertionError(f"exited ({process.returncode}) while waiting for {what}{output}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{log_tail(log)}")


def log_tail(log: Path | None, chars: int = 4000) -> str:
    """'; the end of <log>: ...', or '' when there is no log, to end a failure message with."""
    if log is None or not log.exists():
        return ""
    return f"; the end of {log.name}:\n{log.read_text(errors='replace')[-chars:]}"


def _stderr_tail(process: subprocess.Popen, chars: int = 4000) -> str:
    """The end of an exited process's piped stderr (text mode), or '' when it was not piped."""
    if process.stderr is None:
        return ""
    _, err = process.communicate()  # it has exited: this reads what is left without waiting
    return f"; the end of its stderr:\n{err[-chars:]}"


def stop(process: subprocess.Popen | None) -> None:
    """Stop a process a test started, its process group, and any child that left the group."""
    if process is None:
        return
    try:
        family = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # what is left of the group
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def start_fit(workdir: Path, env: dict[str, str], config: str = "exp.yaml") -> subprocess.Popen:
    """`plexlab fit CONFIG` as a real process in `workdir`, in its own session (so `stop` takes its whole
    group), with its output piped as text. The embedded store's tables are created first: a test polling a
    new store while the fit's first call creates it races MLflow's migrations ("table ... already exists")."""
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_experiments(max_results=1)
    return subprocess.Popen(
        [sys.executable, "-m", "plexlab.cli", "fit", config],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def start_mlflow_server(port: int, store: Path, log: Path) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1 with a SQLite store and local artifacts in `store`, once healthy."""
    command = [
        *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)),
        *("--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"),
        *("--artifacts-destination", str(store / "artifacts"), "--workers", "1"),
    ]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    store.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # mlflow server runs uvicorn as a child: its own group, so both go
        server = subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(uri), 90, "the MLflow server", every=0.5, process=server, log=log)
    except BaseException:
        stop(server)
        raise
    return server
