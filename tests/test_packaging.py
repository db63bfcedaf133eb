"""The built wheel, installed in a fresh virtual environment outside the repository, imports every module."""

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from conftest import ROOT

IMPORT_ALL = """
import importlib, pkgutil, sys
import plexlab, plexlab.modules, plexlab.datamodules
names = sorted({m.name for m in pkgutil.walk_packages(plexlab.__path__, "plexlab.")})
for name in names:
    module = importlib.import_module(name)
    assert module.__file__.startswith(sys.prefix), (name, module.__file__)
import platform
assert platform.__file__.startswith(sys.base_prefix), platform.__file__  # the standard library's
print(len(names))
"""


def test_wheel_installs_and_imports_every_module(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("plexlab-*.whl")
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # The dependencies come from this environment (no network); plexlab itself only from the wheel.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
    )
    done = subprocess.run([python, "-c", IMPORT_ALL], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    count = int(done.stdout.strip().splitlines()[-1])
    expected = len(list((ROOT / "platform").glob("*.py"))) + len(list((ROOT / "modules").glob("*.py")))
    expected += len(list((ROOT / "datamodules").glob("*.py"))) - 2  # the two __init__ files are packages
    assert count >= expected
