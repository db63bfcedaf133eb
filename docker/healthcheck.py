#!/usr/bin/env python3
"""Container health check of the plexlab image (Dockerfile HEALTHCHECK and compose healthchecks).

- A container that runs a Ray node (a `raylet` process): healthy when `ray health-check` reaches the
  cluster's GCS. It finds the address in the node's session files, and authenticates with the token from
  RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH like any Ray client.
- Any other container (a one-off `plexlab` command): healthy when the plexlab CLI imports.
Exit status 0 is healthy, 1 unhealthy (what Docker expects).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path


def runs_raylet() -> bool:
    """True when a process named `raylet` runs in this container (its PID namespace)."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "raylet":
                return True
        except OSError:  # the process ended while we looked
            continue
    return False


def main() -> int:
    if runs_raylet():
        done = subprocess.run(["ray", "health-check"], capture_output=True, timeout=15, check=False)
        return 0 if done.returncode == 0 else 1
    if Path("/proc/1/cmdline").read_bytes().find(b"ray\x00start") >= 0:
        return 1  # this container is meant to be a Ray node, but its raylet is gone
    return 0 if importlib.util.find_spec("plexlab.cli") is not None else 1


if __name__ == "__main__":
    sys.exit(main())
