"""A user's fresh clone has nothing beside it: the README's main job must still run there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from plexlab import schema, tracking

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_the_quickstart_sweep_runs_in_a_fresh_clone_with_nothing_beside_it(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    clone = tmp_path / "empty" / "plexlab"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    assert sorted(p.name for p in clone.parent.iterdir()) == ["plexlab"], "something lies beside the clone"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "RAY_ADDRESS"))}
    command = [sys.executable, "-m", "plexlab.cli", "sweep", "sweeps/quickstart.yaml"]
    command += ["--set", "sweep.num_samples=2", "--set", "trainer.max_epochs=12", "--set", "model.hidden=16"]
    done = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    uri = tracking.resolve_uri(None, cwd=clone)
    runs = tracking.search(uri, "hypergcl-quickstart")
    parents = [r for r in runs if r.tags.get(schema.KIND) == schema.SWEEP_KIND]
    children = [r for r in runs if r.tags.get(schema.PARENT_RUN_ID)]
    assert len(parents) == 1 and parents[0].status == "FINISHED"
    assert len(children) == 2 and {c.status for c in children} == {"FINISHED"}, [c.status for c in children]
