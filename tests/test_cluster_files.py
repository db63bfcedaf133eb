"""docker/cluster/: the Ray cluster launcher file, the KubeRay manifests and the SLURM batch script.

Static checks run everywhere (schema of the launcher file from the installed Ray, every KubeRay document,
`bash -n` and process hygiene of the SLURM script). A slow test runs the SLURM script for real on this
machine, with `srun`/`scontrol` shims that place the "nodes" locally: a two-node Ray cluster with token
authentication forms, the sweep command gets the head's address, and every Ray process is gone afterwards.
"""

import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "docker" / "cluster"
LAUNCHER = CLUSTER / "aws.yaml"
KUBERAY = CLUSTER / "kuberay.yaml"
SLURM = CLUSTER / "slurm.sbatch"
SECRET_NAMES = re.compile(r"PASSWORD|TOKEN|SECRET", re.IGNORECASE)


# --- Ray cluster launcher --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def test_launcher_matches_rays_own_schema(launcher: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    ray = pytest.importorskip("ray")
    schema_file = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    if not schema_file.is_file():
        pytest.skip("this Ray build ships no autoscaler schema")
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert [e.message for e in validator.iter_errors(launcher)] == []
    assert list(validator.iter_errors({**launcher, "max_wrokers": 2})), "the schema rejects unknown keys"


def test_launcher_nodes_code_and_install(launcher: dict) -> None:
    assert launcher["provider"]["type"] in {"aws", "gcp", "azure"}
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    assert any(t.get("resources", {}).get("GPU", 0) >= 1 for t in types.values()), "a GPU worker type"
    mounts = launcher["file_mounts"]
    assert "." in mounts.values(), "the repository is synced to the nodes"
    assert any(remote.endswith(".ray/auth_token") for remote in mounts), "the token is synced to the nodes"
    setup = "\n".join(launcher["setup_commands"])
    assert re.search(r'"torch==\d+\.\d+\.\d+"', setup) and "download.pytorch.org/whl/cu" in setup
    assert "plexlab[all]" in setup and "--constraint" in setup
    assert ".venv" in launcher["rsync_exclude"] and "docker/secrets" in launcher["rsync_exclude"]


def test_launcher_starts_ray_with_token_auth_and_a_local_dashboard(launcher: dict) -> None:
    head = " ".join(launcher["head_start_ray_commands"])
    workers = " ".join(launcher["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:6379" in workers
    assert "export RAY_AUTH_MODE=token" in "\n".join(launcher["setup_commands"])


# --- KubeRay ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    documents = [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]
    kinds = [d["kind"] for d in documents]
    assert len(kinds) == len(set(kinds))
    for document in documents:
        assert document["apiVersion"] and document["metadata"]["name"]
    return {d["kind"]: d for d in documents}


def cluster_specs(manifests: dict) -> list[dict]:
    return [manifests["RayCluster"]["spec"], manifests["RayJob"]["spec"]["rayClusterSpec"]]


def containers(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, c) for name, group in groups for c in group["template"]["spec"]["containers"]]


def test_kuberay_documents(manifests: dict) -> None:
    assert set(manifests) == {"PersistentVolumeClaim", "RayCluster", "RayJob"}
    assert manifests["RayCluster"]["apiVersion"] == manifests["RayJob"]["apiVersion"] == "ray.io/v1"
    assert "ReadWriteMany" in manifests["PersistentVolumeClaim"]["spec"]["accessModes"]
    assert "Secret" not in manifests, "secrets are created out of band"


def test_kuberay_token_auth_on_every_pod(manifests: dict) -> None:
    for name, container in containers(manifests["RayCluster"]["spec"]):
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"], name
    # The RayJob lets the operator generate the token and wire head, workers and submitter.
    assert manifests["RayJob"]["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    for spec in cluster_specs(manifests):
        assert tuple(int(x) for x in spec["rayVersion"].split(".")) >= (2, 52), "token auth needs Ray 2.52+"


def test_kuberay_secrets_are_references_and_nothing_is_exposed(manifests: dict) -> None:
    for spec in cluster_specs(manifests):
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
        for name, container in containers(spec):
            for variable in container.get("env", []):
                if SECRET_NAMES.search(variable["name"]):
                    assert "value" not in variable and "secretKeyRef" in variable["valueFrom"], name
            assert container["image"].rpartition(":")[2] not in ("", "latest"), name
    assert "Ingress" not in manifests and "Service" not in manifests


def test_kuberay_gpus_and_shared_storage(manifests: dict) -> None:
    claim = manifests["PersistentVolumeClaim"]["metadata"]["name"]
    for spec in cluster_specs(manifests):
        for group in spec["workerGroupSpecs"]:
            (container,) = group["template"]["spec"]["containers"]
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        for name, container in containers(spec):
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "/shared" in mounts and "/workspace/shared/data" in mounts, name
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
            assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == claim
            assert group["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_rayjob_runs_a_plexlab_sweep(manifests: dict) -> None:
    job = manifests["RayJob"]["spec"]
    entrypoint = job["entrypoint"]
    assert "plexlab sweep sweeps/" in entrypoint and "--address auto" in entrypoint
    assert "--storage /shared/" in entrypoint, "results on the shared volume, so the sweep can resume"
    assert job["shutdownAfterJobFinishes"] is True


# --- SLURM -----------------------------------------------------------------------------------------------


def test_slurm_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SLURM)], check=True)


def test_slurm_script_flow_and_hygiene() -> None:
    text = SLURM.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert text.startswith("#!/bin/bash") and "#SBATCH --nodes=" in text
    assert "set -euo pipefail" in code
    assert "export RAY_AUTH_MODE=token" in code and "export RAY_AUTH_TOKEN" in code
    assert re.search(r"srun [^\n]*-w \"\$HEAD_NODE\"\s*\\\n\s*ray start --head --block", code)
    assert "--dashboard-host=127.0.0.1" in code
    assert re.search(
        r"--exclude=\"\$HEAD_NODE\"\s*\\\n\s*ray start --block --address=\"\$HEAD_ADDRESS\"", code
    )
    assert 'plexlab sweep "$SWEEP_FILE" --address "$HEAD_ADDRESS" --storage "$STORAGE" "$@"' in code
    assert "trap cleanup EXIT" in code
    # Stops only what it started: by the process ids of its own srun steps, never by name.
    for forbidden in ("ray stop", "pkill", "killall", "scancel", "kill -9 -", "kill 0"):
        assert forbidden not in code, forbidden
    for kill in re.findall(r"\bkill -\w+ ([^ ;]+)", code):
        assert kill in ('"$pid"', '"$HEAD_PID"'), kill
    assert set(re.findall(r"for pid in ([^;]+);", code)) == {"$WORKERS_PID $HEAD_PID"}
    assert "HEAD_PID=$!" in code and "WORKERS_PID=$!" in code


SHIMS = {
    # Drop srun's options (and -w's value) and run the command here: every "node" is this machine.
    "srun": """\
        #!/bin/bash
        while [ $# -gt 0 ]; do case "$1" in -w) shift 2;; -*) shift;; *) break;; esac; done
        exec "$@"
        """,
    "scontrol": """\
        #!/bin/bash
        printf 'node-a\\nnode-b\\n'
        """,
    # Stands in for the sweep: joins the cluster at --address and records what it saw.
    "plexlab": """\
        #!/usr/bin/env python
        import json, os, sys
        import ray
        args = sys.argv[1:]
        ray.init(address=args[args.index("--address") + 1], logging_level="ERROR")
        alive = [n for n in ray.nodes() if n["Alive"]]
        record = {"args": args, "nodes": len(alive), "auth": os.environ.get("RAY_AUTH_MODE")}
        with open(os.environ["SIM_OUT"], "w") as f:
            json.dump(record, f)
        sys.exit(int(os.environ.get("SIM_STATUS", "0")))
        """,
}


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.skipif(shutil.which("ray") is None and not (ROOT / ".venv/bin/ray").exists(), reason="no ray")
def test_slurm_script_runs_a_two_node_cluster_and_cleans_up(tmp_path: Path) -> None:
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, body in SHIMS.items():
        (shims / name).write_text(textwrap.dedent(body))
        (shims / name).chmod(0o755)
    job_id = f"{os.getpid()}"
    env = {
        **os.environ,
        "PATH": f"{shims}{os.pathsep}{ROOT / '.venv/bin'}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_JOB_ID": job_id,
        "SLURM_CPUS_PER_TASK": "1",
        "PLEXLAB_SHARED": str(tmp_path / "shared"),
        "HEAD_IP": "127.0.0.1",
        "RAY_PORT": str(46000 + os.getpid() % 1000),
        "RAY_DASHBOARD_PORT": str(47000 + os.getpid() % 1000),
        "RAY_TEMP_DIR": f"/tmp/ray_plexlab_test_{job_id}",
        "SIM_OUT": str(tmp_path / "out.json"),
        "SIM_STATUS": "3",
    }
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        ["bash", str(SLURM), "sweeps/x_sweep.yaml", "--set", "model.lr=0.01"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 3, done.stdout + done.stderr  # the sweep's status is the job's status
    seen = json.loads((tmp_path / "out.json").read_text())
    storage = str(tmp_path / "shared" / "ray_results")
    address = f"127.0.0.1:{env['RAY_PORT']}"
    assert seen == {
        "args": [
            "sweep",
            "sweeps/x_sweep.yaml",
            "--address",
            address,
            "--storage",
            storage,
            "--set",
            "model.lr=0.01",
        ],
        "nodes": 2,
        "auth": "token",
    }
    assert "Ray cluster stopped" in done.stdout
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert env["RAY_TEMP_DIR"] not in left and f":{env['RAY_PORT']}" not in left
    shutil.rmtree(env["RAY_TEMP_DIR"], ignore_errors=True)
