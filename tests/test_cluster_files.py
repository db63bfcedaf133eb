"""docker/cluster/: the Ray cluster launcher file, the KubeRay manifests and the SLURM batch script.

Static checks run everywhere (schema of the launcher file from the installed Ray, its security group,
every KubeRay document: NetworkPolicies, securityContexts, MLflow over TLS with credentials from files,
`bash -n` and process hygiene of the SLURM script). The KubeRay container command and the SLURM script's
per-node wrapper run for real. A slow test runs the SLURM script on this machine, with `srun`/`scontrol`
shims that place the "nodes" locally: a two-node Ray cluster with token authentication forms in private
temporary folders, the sweep command gets the head's address, and every Ray process and folder is gone
afterwards.
"""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
CLUSTER = DOCKER / "cluster"
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


def test_launcher_nodes_use_a_restricted_security_group(launcher: dict) -> None:
    """Without SecurityGroupIds on every node type, Ray creates a group with SSH open to 0.0.0.0/0."""
    groups = {
        name: t["node_config"].get("SecurityGroupIds") for name, t in launcher["available_node_types"].items()
    }
    assert all(groups.values()), f"node types without SecurityGroupIds: {groups}"
    assert len({tuple(g) for g in groups.values()}) == 1, (
        "head and workers share one group (intra-cluster rule)"
    )
    assert all(re.fullmatch(r"sg-[0-9a-f]{8,17}", sg) for sg in next(iter(groups.values())))
    assert "security_group" not in launcher["provider"], "ignored when every node type names its groups"
    text = LAUNCHER.read_text()
    assert "0.0.0.0/0" not in text.replace("SSH from 0.0.0.0/0 to it", "")
    # The documented group: SSH from one placeholder CIDR, everything from the group itself, nothing else.
    rules = re.findall(r"aws ec2 authorize-security-group-ingress (.*)", text)
    assert len(rules) == 2, rules
    ssh, intra = rules
    assert "--protocol tcp --port 22" in ssh and re.search(r"--cidr (\d+\.){3}\d+/\d+$", ssh)
    assert "--protocol -1" in intra and '--source-group "$SG"' in intra


# --- KubeRay ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    documents = [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]
    names = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert len(names) == len(set(names))
    for document in documents:
        assert document["apiVersion"] and document["metadata"]["name"]
    return documents


@pytest.fixture(scope="module")
def manifests(documents: list[dict]) -> dict[str, dict]:
    """The one document of each kind there is one of."""
    kinds = [d["kind"] for d in documents]
    return {d["kind"]: d for d in documents if kinds.count(d["kind"]) == 1}


@pytest.fixture(scope="module")
def policies(documents: list[dict]) -> list[dict]:
    return [d for d in documents if d["kind"] == "NetworkPolicy"]


def cluster_specs(manifests: dict) -> list[dict]:
    return [manifests["RayCluster"]["spec"], manifests["RayJob"]["spec"]["rayClusterSpec"]]


def groups(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def containers(spec: dict) -> list[tuple[str, dict]]:
    return [(name, c) for name, group in groups(spec) for c in group["template"]["spec"]["containers"]]


def pod_templates(manifests: dict) -> list[tuple[str, dict]]:
    """Every pod the manifests make: head and workers of both clusters, and the RayJob's submitter."""
    found = [
        (f"{kind}/{name}", group["template"])
        for kind, spec in zip(("RayCluster", "RayJob"), cluster_specs(manifests), strict=True)
        for name, group in groups(spec)
    ]
    found.append(("RayJob/submitter", manifests["RayJob"]["spec"]["submitterPodTemplate"]))
    return found


def pod_labels(template: dict, node_type: str | None = None) -> dict:
    """The pod's labels as KubeRay creates it: the template's own plus ray.io/node-type."""
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    if node_type:
        labels["ray.io/node-type"] = node_type
    return labels


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are checked here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_kuberay_documents(documents: list[dict], manifests: dict) -> None:
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == sorted(["PersistentVolumeClaim", "RayCluster", "RayJob"] + ["NetworkPolicy"] * 4)
    assert manifests["RayCluster"]["apiVersion"] == manifests["RayJob"]["apiVersion"] == "ray.io/v1"
    assert "ReadWriteMany" in manifests["PersistentVolumeClaim"]["spec"]["accessModes"]
    assert "Secret" not in manifests and "ConfigMap" not in manifests, "secrets are created out of band"


def test_kuberay_token_auth_on_every_pod(manifests: dict) -> None:
    for name, group in groups(manifests["RayCluster"]["spec"]):
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        assert "RAY_AUTH_TOKEN" not in env, f"{name}: the token comes from a file, not the environment"
        mounted = mounted_file(group["template"]["spec"], container, env["RAY_AUTH_TOKEN_PATH"]["value"])
        assert mounted == ("secret", "plexlab-ray-auth", "auth_token"), name
    # The RayJob lets the operator generate the token and wire head, workers and submitter.
    assert manifests["RayJob"]["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    for spec in cluster_specs(manifests):
        assert tuple(int(x) for x in spec["rayVersion"].split(".")) >= (2, 52), "token auth needs Ray 2.52+"


def test_kuberay_secrets_are_references_and_nothing_is_exposed(manifests: dict) -> None:
    for spec in cluster_specs(manifests):
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
        for name, container in containers(spec):
            for variable in container.get("env", []):
                if variable["name"].endswith(("_FILE", "_PATH")):
                    assert variable["value"].startswith("/etc/plexlab/"), (
                        f"{name}: {variable}"
                    )  # a mounted file
                elif SECRET_NAMES.search(variable["name"]):
                    assert "value" not in variable and "secretKeyRef" in variable["valueFrom"], name
            assert container["image"].rpartition(":")[2] not in ("", "latest"), name
    assert "Ingress" not in manifests and "Service" not in manifests


def mounted_file(pod_spec: dict, container: dict, path: str) -> tuple[str, str, str]:
    """(volume kind, Secret/ConfigMap name, key) of the file at `path` in the container."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    for mount in container["volumeMounts"]:
        folder = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(folder) and "subPath" not in mount:
            volume = volumes[mount["name"]]
            assert mount.get("readOnly") is True, f"{mount['name']} must be mounted read-only"
            relative = path.removeprefix(folder)
            for kind, name_key in (("secret", "secretName"), ("configMap", "name")):
                if kind in volume:
                    source = volume[kind]
                    items = {i["path"]: i["key"] for i in source.get("items", [])}
                    if kind == "secret":
                        # Readable by the pod's user/group only (fsGroup), not by other users.
                        assert source.get("defaultMode", 0o644) & 0o007 == 0, f"{mount['name']}: mode"
                    return kind, source[name_key], items.get(relative, relative)
    pytest.fail(f"{path} is not in a mounted Secret or ConfigMap of {container['name']}")


def test_kuberay_mlflow_credentials_come_from_a_file_never_the_environment(manifests: dict) -> None:
    for kind, spec in zip(("RayCluster", "RayJob"), cluster_specs(manifests), strict=True):
        for name, group in groups(spec):
            pod = group["template"]["spec"]
            for container in pod["containers"]:
                env = {e["name"]: e for e in container["env"]}
                where = f"{kind}/{name}"
                assert "MLFLOW_TRACKING_PASSWORD" not in env, (
                    f"{where}: Ray forwards and logs its environment"
                )
                password = mounted_file(pod, container, env["MLFLOW_TRACKING_PASSWORD_FILE"]["value"])
                assert password == ("secret", "plexlab-mlflow", "password"), where
                assert (
                    env["MLFLOW_TRACKING_USERNAME"]["valueFrom"]["secretKeyRef"]["name"] == "plexlab-mlflow"
                )
                # The image's entrypoint (which writes ~/.mlflow/credentials) runs before KubeRay's ray start.
                command = container["command"]
                assert command[:3] == ["tini", "--", "plexlab-entrypoint"], where
                assert command[3:] == ["/bin/bash", "-lc", "--"], where
                assert container["args"] == ["ulimit -n 65536; $KUBERAY_GEN_RAY_START_CMD"], where
    for kind in ("RayCluster", "RayJob"):
        annotations = manifests[kind]["metadata"]["annotations"]
        assert annotations["ray.io/overwrite-container-cmd"] == "true", (
            f"{kind}: else KubeRay drops our command"
        )


def test_kuberay_reaches_mlflow_over_tls_with_a_ca_bundle(manifests: dict) -> None:
    for kind, spec in zip(("RayCluster", "RayJob"), cluster_specs(manifests), strict=True):
        for name, group in groups(spec):
            pod = group["template"]["spec"]
            for container in pod["containers"]:
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert env["MLFLOW_TRACKING_URI"].startswith("https://"), f"{kind}/{name}"
                source = mounted_file(pod, container, env["MLFLOW_TRACKING_SERVER_CERT_PATH"])
                assert source == ("configMap", "plexlab-mlflow-ca", "ca.crt"), f"{kind}/{name}"
                assert "MLFLOW_TRACKING_INSECURE_TLS" not in env


def test_every_pod_and_container_is_locked_down(manifests: dict) -> None:
    for where, template in pod_templates(manifests):
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in template["spec"]["containers"]:
            context = container.get("securityContext") or {}
            assert context.get("allowPrivilegeEscalation") is False, f"{where}/{container['name']}"
            assert context.get("capabilities") == {"drop": ["ALL"]}, f"{where}/{container['name']}"
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{where}/{container['name']}"
            assert context.get("runAsNonRoot") is True, f"{where}/{container['name']}"
            assert not context.get("privileged"), f"{where}/{container['name']}"


OPERATOR = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-operator"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/component": "kuberay-operator"}},
}
SUBMITTER = {
    "podSelector": {
        "matchLabels": {
            "ray.io/originated-from-cr-name": "plexlab-sweep",
            "ray.io/originated-from-crd": "RayJob",
        }
    }
}


def ingress_sources(policies: list[dict], labels: dict) -> list[tuple[dict, set[int] | None]]:
    """(peer, ports or None for all) that may reach a pod with these labels; [] if nothing isolates it."""
    sources = []
    for policy in policies:
        spec = policy["spec"]
        if selects(spec["podSelector"], labels):
            assert "Ingress" in spec["policyTypes"], policy["metadata"]["name"]
            for rule in spec.get("ingress", []):
                assert rule.get("from"), (
                    f"{policy['metadata']['name']}: a rule without `from` admits every source"
                )
                ports = {p["port"] for p in rule["ports"]} if rule.get("ports") else None
                sources.extend((peer, ports) for peer in rule["from"])
    return sources


def test_kuberay_network_policies_keep_the_ray_ports_inside_the_cluster(
    manifests: dict, policies: list
) -> None:
    for kind, spec in zip(("RayCluster", "RayJob"), cluster_specs(manifests), strict=True):
        head = pod_labels(spec["headGroupSpec"]["template"], "head")
        assert head.get("plexlab.io/ray-cluster"), f"{kind}: the head carries the label the policies select"
        own = {"plexlab.io/ray-cluster": head["plexlab.io/ray-cluster"]}
        allowed = [({"podSelector": {"matchLabels": own}}, None), (OPERATOR, {8265, 10001})]
        if kind == "RayJob":
            allowed.append((SUBMITTER, {8265}))
        sources = ingress_sources(policies, head)
        assert sources, f"{kind}: no NetworkPolicy selects the head"
        for peer, ports in sources:
            assert "ipBlock" not in peer, f"{kind}: {peer}"
            match = [a_ports for a_peer, a_ports in allowed if a_peer == peer]
            assert match, f"{kind}: the head admits {peer}"
            assert match[0] is None or (ports is not None and ports <= match[0]), f"{kind}: {peer} on {ports}"
        assert {json.dumps(p, sort_keys=True) for p, _ in sources} == {
            json.dumps(p, sort_keys=True) for p, _ in allowed
        }, f"{kind}: the cluster's own pods, the operator (and the submitter) all get in"
        # Workers too: reachable from their own cluster only.
        for name, group in groups(spec)[1:]:
            labels = pod_labels(group["template"], "worker")
            assert labels.get("plexlab.io/ray-cluster") == own["plexlab.io/ray-cluster"], name
            assert ingress_sources(policies, labels) == [({"podSelector": {"matchLabels": own}}, None)], name
    names = {
        pod_labels(s["headGroupSpec"]["template"])["plexlab.io/ray-cluster"] for s in cluster_specs(manifests)
    }
    assert len(names) == 2, "the RayCluster and the RayJob's cluster do not admit each other"


def test_kuberay_container_command_writes_credentials_before_ray_starts(
    tmp_path: Path, manifests: dict
) -> None:
    """The head's command line as the pod runs it (less tini), with the Secret files at temporary paths."""
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    container = manifests["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    bin_dir, home, secrets = tmp_path / "bin", tmp_path / "home", tmp_path / "secrets"
    for folder in (bin_dir, home, secrets):
        folder.mkdir()
    (bin_dir / "plexlab-entrypoint").symlink_to(DOCKER / "entrypoint.sh")
    (secrets / "password").write_text("pod-pw-123\n")  # `kubectl create secret --from-file` keeps the newline
    (secrets / "auth_token").write_text("tok")
    env = {e["name"]: e.get("value") for e in container["env"]}
    env.update(
        MLFLOW_TRACKING_USERNAME="alice",
        MLFLOW_TRACKING_PASSWORD_FILE=str(secrets / "password"),
        RAY_AUTH_TOKEN_PATH=str(secrets / "auth_token"),
        HOME=str(home),
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        # What KubeRay generates (plain words, split by the shell), with a probe in place of `ray`. By
        # full path: the login shell resets PATH (the image puts its venv back in /etc/profile.d).
        KUBERAY_GEN_RAY_START_CMD=f"{bin_dir / 'ray-probe'} start --head --block",
    )
    (bin_dir / "ray-probe").write_text(
        '#!/bin/sh\necho "$* $MLFLOW_TRACKING_USERNAME ${MLFLOW_TRACKING_PASSWORD:-unset}"\n'
        'cat "$HOME/.mlflow/credentials"\n'
    )
    (bin_dir / "ray-probe").chmod(0o755)
    command = container["command"][2:] + container["args"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first == "start --head --block alice unset", (
        "ray start ran, and the password is not in its environment"
    )
    assert "mlflow_tracking_password = pod-pw-123" in done.stdout
    credentials = home / ".mlflow" / "credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.parent.stat().st_mode) == 0o700


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
    on_node = r'bash -c "\$RAY_ON_NODE" ray-on-node'
    assert re.search(
        r"srun [^\n]*-w \"\$HEAD_NODE\" " + on_node + r"\s*\\\n\s*ray start --head --block", code
    )
    assert "--dashboard-host=127.0.0.1" in code
    assert re.search(
        r"--exclude=\"\$HEAD_NODE\"\s*\\\n\s*"
        + on_node
        + r"\s*\\\n\s*ray start --block --address=\"\$HEAD_ADDRESS\"",
        code,
    )
    # Private temporary folders: made per node by mktemp -d, never a path other users can predict.
    assert 'mktemp -d "${TMPDIR:-/tmp}/pxr-XXXXXX"' in code
    assert '--temp-dir="$private/ray"' in code and "/tmp/ray_" not in code
    assert code.count("--temp-dir=") == 2, "only the wrapper passes --temp-dir"
    assert 'plexlab sweep "$SWEEP_FILE" --address "$HEAD_ADDRESS" --storage "$STORAGE" "$@"' in code
    assert "trap cleanup EXIT" in code
    # Stops only what it started: by the process ids of its own srun steps, never by name.
    for forbidden in ("ray stop", "pkill", "killall", "scancel", "kill -9 -", "kill 0"):
        assert forbidden not in code, forbidden
    for kill in re.findall(r"\bkill -\w+ ([^ ;]+)", code):
        assert kill in ('"$pid"', '"$HEAD_PID"'), kill
    assert set(re.findall(r"for pid in ([^;]+);", code)) == {"$WORKERS_PID $HEAD_PID"}
    assert "HEAD_PID=$!" in code and "WORKERS_PID=$!" in code


def ray_on_node_script() -> str:
    """The per-node wrapper the SLURM script hands to `bash -c` on every node."""
    match = re.search(r"RAY_ON_NODE=\$\(cat <<'SH'\n(.*?)\nSH\n\)", SLURM.read_text(), re.DOTALL)
    assert match, "RAY_ON_NODE heredoc not found"
    return match.group(1)


FAKE_RAY = """\
#!/bin/bash
# Records its arguments and its private folder's mode, then blocks like `ray start --block` until SIGTERM.
last=${!#}
temp=${last#--temp-dir=}
printf '%s\\n%s\\n' "$*" "$(stat -c %a "$(dirname "$temp")")" > "$FAKE_OUT.tmp"
mv "$FAKE_OUT.tmp" "$FAKE_OUT"
[ -n "${FAKE_STATUS:-}" ] && exit "$FAKE_STATUS"
trap 'echo drained >> "$FAKE_OUT"; exit 0' TERM
while :; do sleep 0.1; done
"""


def test_slurm_node_wrapper_runs_ray_in_a_private_folder_and_removes_it(tmp_path: Path) -> None:
    fake = tmp_path / "fake-ray"
    fake.write_text(FAKE_RAY)
    fake.chmod(0o755)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "out"
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(scratch), "SLURM_JOB_ID": "77", "FAKE_OUT": str(out)}
    command = ["bash", "-c", ray_on_node_script(), "ray-on-node", str(fake), "start", "--block"]
    # Its own process group, so that a failing check still ends the fake Ray below it.
    node = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not out.exists():
            assert node.poll() is None and time.monotonic() < deadline, "the wrapper did not start Ray"
            time.sleep(0.05)
        arguments, mode = out.read_text().splitlines()[:2]
        temp_dir = Path(arguments.split("--temp-dir=")[1])
        assert arguments.startswith("start --block --temp-dir=")
        assert temp_dir.name == "ray" and re.fullmatch(r"pxr-\w{6}", temp_dir.parent.name)
        assert temp_dir.parent.parent == scratch and mode == "700", "private: mode 700, random name"
        node.send_signal(signal.SIGTERM)  # what srun forwards when the job ends
        assert node.wait(timeout=30) == 0
    finally:
        try:
            os.killpg(node.pid, signal.SIGKILL)  # nothing left when the checks passed
        except ProcessLookupError:
            pass
        node.wait()
    assert out.read_text().splitlines()[-1] == "drained", "Ray got the SIGTERM and drained"
    assert list(scratch.iterdir()) == [], "the private folder is removed"

    # Ray's exit status is the step's; the folder goes in that case too.
    out.unlink()
    done = subprocess.run(command, env={**env, "FAKE_STATUS": "3"}, timeout=30)
    assert done.returncode == 3 and list(scratch.iterdir()) == []
    # A RAY_TEMP_DIR set by the user is used as it is.
    done = subprocess.run(command, env={**env, "FAKE_STATUS": "0", "RAY_TEMP_DIR": "/mine"}, timeout=30)
    assert done.returncode == 0 and out.read_text().splitlines()[0] == "start --block --temp-dir=/mine"


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
        # The nodes' private temporary folders (both "nodes" are this machine) and their modes.
        private = [e for e in os.scandir(os.environ["TMPDIR"]) if e.name.startswith("pxr-")]
        record["private"] = sorted(oct(e.stat().st_mode & 0o777) for e in private)
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
    # Short: Ray's socket paths under it must stay below the 107-character limit of Unix sockets.
    scratch = Path(tempfile.mkdtemp(prefix="pxs", dir="/tmp"))
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
        "TMPDIR": str(scratch),
        "SIM_OUT": str(tmp_path / "out.json"),
        "SIM_STATUS": "3",
    }
    for name in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_TEMP_DIR"):
        env.pop(name, None)
    try:
        done = subprocess.run(
            ["bash", str(SLURM), "sweeps/x_sweep.yaml", "--set", "model.lr=0.01"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        left_folders = list(scratch.glob("pxr-*"))  # ours (Python leaves its own pymp-* there)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
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
        "private": ["0o700", "0o700"],  # one private folder per node
    }
    assert "Ray cluster stopped" in done.stdout
    assert left_folders == [], "each node removed its private folder"
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(scratch) not in left and f":{env['RAY_PORT']}" not in left
