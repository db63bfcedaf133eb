"""A Ray head with its job server for tests: on 127.0.0.1, token authentication on with a private token,
every port chosen free (other Ray clusters on the machine hold Ray's default agent ports), stopped by pid."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
from _processes import free_port, stop, wait_for


@dataclass
class RayHead:
    """A running head: its job server's address, its token file, the environment it runs with."""

    process: subprocess.Popen
    address: str  # http://127.0.0.1:PORT, the dashboard's job API
    token_file: Path
    env: dict[str, str]
    log: Path


def start_ray_head(folder: Path, cpus: int = 2) -> RayHead:
    """`ray start --head --block` in its own session; returns once the job server answers."""
    folder.mkdir(parents=True, exist_ok=True)
    token_file = folder / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `plexlab` is this one
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    dashboard = free_port()
    command = [
        str(Path(bin_dir) / "ray"),
        *("start", "--head", "--block", f"--port={free_port()}", f"--num-cpus={cpus}"),
        *("--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"),
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]
    log = folder / "head.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
    head = RayHead(process, f"http://127.0.0.1:{dashboard}", token_file, env, log)
    try:
        wait_for(lambda: _job_server_up(head), 120, "the Ray head's job server", process=process, log=log)
    except BaseException:
        stop(process)
        raise
    return head


def stop_ray_head(head: RayHead, grace: float = 5) -> None:
    """SIGTERM to the head's process group, SIGKILL to it and to the head's children `grace` s later
    (`ray start --block` takes over 20 s to drain a node it is about to lose anyway)."""
    try:
        family = psutil.Process(head.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.process.wait(timeout=grace)
    for child in family:
        with contextlib.suppress(psutil.Error):
            child.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.process.pid, signal.SIGKILL)
    stop(head.process)  # reaps it; anything left of the group


def _job_server_up(head: RayHead) -> bool:
    """The job API answers with the token (a job submitted before the head's agent is up waits for it)."""
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {head.token_file.read_text().strip()}"}
    try:
        JobSubmissionClient(head.address, headers=headers).list_jobs()
    except Exception:
        return False
    return True
