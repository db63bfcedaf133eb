"""docker/: the compose stack, the images and their entry points, checked without a Docker engine.

The compose file is validated against the compose-spec JSON schema vendored by `check-jsonschema` (skipped
when that package is absent) and then against plexlab's own rules: nothing published beyond 127.0.0.1,
MLflow with basic auth, allowed hosts and PostgreSQL, the Ray nodes on a non-admin MLflow account, Ray
token auth on every node, GPUs on the workers, secrets only as files, healthchecks everywhere. The entry
point scripts and the account set-up run for real on temporary secret files (the set-up needs
mlflow[auth], i.e. Flask-WTF, and is skipped without it).
"""

import configparser
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _processes import free_port, stop

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
RAY_SERVICES_PREFIX = "ray-"
SECRET_WORDS = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$|CREDENTIAL", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def resolve(value: str) -> str:
    """Compose interpolation with an empty environment: `${VAR:-default}` becomes `default`."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def ray_services(services: dict) -> dict:
    return {name: svc for name, svc in services.items() if name.startswith(RAY_SERVICES_PREFIX)}


def workers(services: dict) -> dict:
    return {name: svc for name, svc in services.items() if name.startswith("ray-worker")}


def env_of(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


# --- compose.yaml ----------------------------------------------------------------------------------------


def test_compose_matches_the_compose_spec_schema(compose: dict) -> None:
    resources = pytest.importorskip("importlib.resources")
    pytest.importorskip("check_jsonschema", reason="check-jsonschema vendors the compose-spec schema")
    jsonschema = pytest.importorskip("jsonschema")
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    # The schema is strict enough to catch a misspelt key.
    broken = json.loads(json.dumps(compose))
    broken["services"]["ray-head"]["helthcheck"] = {}
    assert any("helthcheck" in e.message for e in validator.iter_errors(broken))


def test_expected_services(services: dict) -> None:
    assert {"postgres", "mlflow", "ray-head"} <= set(services)
    assert len(workers(services)) >= 2


def test_ports_are_published_on_loopback_only(services: dict) -> None:
    published = []
    for name, svc in services.items():
        for port in svc.get("ports", []):
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
                published.append((name, port.get("published")))
                assert host_ip == "127.0.0.1", f"{name}: {port} is not bound to 127.0.0.1"
            else:
                published.append((name, port))
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not bound to 127.0.0.1"
                assert resolve(str(port)).count(":") == 2, f"{name}: {port} must be 127.0.0.1:HOST:CONTAINER"
    names = {name for name, _ in published}
    assert names == {"mlflow", "ray-head"}, "only the MLflow UI and the Ray dashboard are published"
    assert any(resolve(str(p)).endswith(":8265") for name, p in published if name == "ray-head")
    assert "ports" not in services["postgres"]


def test_postgres_is_private_and_the_mlflow_backend(compose: dict, services: dict) -> None:
    pg = services["postgres"]
    assert pg["image"].split(":")[1] not in ("", "latest")
    (network,) = pg["networks"]
    assert compose["networks"][network].get("internal") is True
    assert env_of(pg)["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    env = env_of(services["mlflow"])
    assert env["MLFLOW_DB_HOST"] == "postgres"
    assert env["MLFLOW_DB_NAME"] == env_of(pg)["POSTGRES_DB"]
    assert env["MLFLOW_DB_USER"] == env_of(pg)["POSTGRES_USER"]
    assert network in services["mlflow"]["networks"]


def test_mlflow_server_has_basic_auth_and_allowed_hosts(services: dict) -> None:
    command = [resolve(str(part)) for part in services["mlflow"]["command"]]
    assert command[:2] == ["mlflow", "server"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    hosts = command[command.index("--allowed-hosts") + 1].split(",")
    assert "*" not in hosts and "mlflow:5000" in hosts, "the Ray nodes reach MLflow as mlflow:5000"
    assert "127.0.0.1:5000" in hosts, "the published UI"
    assert "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] == "/mlartifacts"
    mounts = [str(v) for v in services["mlflow"]["volumes"]]
    assert any(m.endswith(":/mlartifacts") for m in mounts)
    env = env_of(services["mlflow"])
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"].startswith("/run/secrets/")
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY_FILE"].startswith("/run/secrets/")


def test_ray_nodes_log_to_mlflow_as_a_non_admin_account(compose: dict, services: dict) -> None:
    mlflow = env_of(services["mlflow"])
    admin = resolve(str(mlflow["MLFLOW_AUTH_ADMIN_USERNAME"]))
    account = resolve(str(mlflow["MLFLOW_RAY_USERNAME"]))
    assert account and account != admin, "the Ray nodes need their own account"
    ray_secret = mlflow["MLFLOW_RAY_PASSWORD_FILE"].removeprefix("/run/secrets/")
    assert ray_secret in services["mlflow"]["secrets"] and ray_secret in compose["secrets"]
    admin_secret = mlflow["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"].removeprefix("/run/secrets/")
    assert admin_secret != ray_secret
    for name, svc in ray_services(services).items():
        env = env_of(svc)
        assert resolve(str(env["MLFLOW_TRACKING_USERNAME"])) == account, name
        assert env["MLFLOW_TRACKING_PASSWORD_FILE"] == f"/run/secrets/{ray_secret}", name
        assert ray_secret in svc["secrets"], name
        assert admin_secret not in svc["secrets"], f"{name}: the admin password never reaches a Ray node"
    # The MLflow image runs the account set-up from its entrypoint.
    dockerfile = (DOCKER / "mlflow.Dockerfile").read_text()
    assert "COPY --chmod=0755 mlflow-ray-user.py /usr/local/bin/mlflow-ray-user" in dockerfile


def test_ray_token_auth_on_every_node(compose: dict, services: dict) -> None:
    nodes = ray_services(services)
    assert "ray-head" in nodes and len(nodes) >= 3
    for name, svc in nodes.items():
        env = env_of(svc)
        assert env.get("RAY_AUTH_MODE") == "token", name
        token_path = env["RAY_AUTH_TOKEN_PATH"]
        secret = token_path.removeprefix("/run/secrets/")
        assert token_path.startswith("/run/secrets/") and secret in svc["secrets"], name
        assert "RAY_AUTH_TOKEN" not in env, f"{name}: the token must come from the secret file"
    # One token for the whole cluster.
    assert len({env_of(svc)["RAY_AUTH_TOKEN_PATH"] for svc in nodes.values()}) == 1
    assert secret in compose["secrets"]


def test_ray_head_and_workers(services: dict) -> None:
    head = [resolve(str(part)) for part in services["ray-head"]["command"]]
    assert head[:3] == ["ray", "start", "--head"] and "--block" in head
    assert "--port=6379" in head and "--dashboard-port=8265" in head
    for name, svc in workers(services).items():
        command = [resolve(str(part)) for part in svc["command"]]
        assert command[:2] == ["ray", "start"] and "--head" not in command, name
        assert "--address=ray-head:6379" in command, name
        assert svc["depends_on"]["ray-head"]["condition"] == "service_healthy", name
    # All Ray nodes see the same storage path and the same data path.
    for name, svc in ray_services(services).items():
        targets = [resolve(str(v)).split(":")[1] for v in svc["volumes"]]
        assert "/shared" in targets and "/workspace/shared/data" in targets, name


def test_workers_reserve_distinct_gpus(services: dict) -> None:
    seen = []
    for name, svc in workers(services).items():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices, name
        for device in devices:
            assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
            ids = [resolve(str(i)) for i in device["device_ids"]]
            seen.extend(ids)
    assert len(seen) == len(set(seen)), "two workers reserve the same GPU"
    assert "deploy" not in services["ray-head"] or "devices" not in str(services["ray-head"]["deploy"])


def test_no_secret_is_inline(compose: dict, services: dict) -> None:
    for name, svc in services.items():
        for key, value in env_of(svc).items():
            if SECRET_WORDS.search(key) and not key.endswith(("_FILE", "_PATH")):
                pytest.fail(f"{name}: {key} carries a secret inline")
            if key.endswith("_FILE") and SECRET_WORDS.search(key):
                assert str(value).startswith("/run/secrets/"), f"{name}: {key}={value}"
        for secret in svc.get("secrets", []):
            assert (secret if isinstance(secret, str) else secret["source"]) in compose["secrets"], name
    for name, secret in compose["secrets"].items():
        assert set(secret) <= {"file", "environment"}, (
            f"secret {name} must come from a file or the environment"
        )
        if "file" in secret:
            assert resolve(secret["file"]).startswith("./secrets/"), name


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_secret_files_and_env_are_ignored_by_git(compose: dict) -> None:
    paths = [f"docker/{resolve(s['file']).removeprefix('./')}" for s in compose["secrets"].values()]
    paths.append("docker/.env")
    done = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    if done.returncode == 128:
        pytest.skip("not a git checkout")
    assert sorted(done.stdout.split()) == sorted(paths)
    tracked = subprocess.run(
        ["git", "ls-files", "docker/secrets", "docker/.env"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert tracked == ""


def test_env_example_documents_every_variable_and_holds_no_secret() -> None:
    example = (DOCKER / ".env.example").read_text()
    settings = dict(
        line.split("=", 1) for line in example.splitlines() if line.strip() and not line.startswith("#")
    )
    used = set(INTERPOLATION.findall(COMPOSE.read_text()))
    assert {name for name, _ in used} <= set(settings)
    for key in settings:
        assert not re.search(r"PASSWORD|TOKEN|SECRET_KEY", key), f"{key} belongs in a secret file"


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies(services: dict) -> None:
    for name, svc in services.items():
        check = svc.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        for dependency, condition in (svc.get("depends_on") or {}).items():
            assert condition["condition"] == "service_healthy", f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency]
    assert "postgres" in services["mlflow"]["depends_on"]
    assert "mlflow" in services["ray-head"]["depends_on"]


def test_images_are_pinned(services: dict) -> None:
    for name, svc in services.items():
        image = resolve(svc["image"])
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
        if "build" in svc:
            build = svc["build"]
            dockerfile = (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve()
            assert dockerfile.is_file(), f"{name}: {dockerfile}"


# --- Dockerfiles -----------------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\") if current else stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("name", ["Dockerfile", "mlflow.Dockerfile"])
def test_dockerfile_is_pinned_non_root_and_healthchecked(name: str) -> None:
    steps = instructions(DOCKER / name)
    froms = [args for op, args in steps if op == "FROM"]
    assert froms
    for image in froms:
        image = image.split()[0]
        assert "$" not in image, f"FROM {image}: pin the base literally"
        repo, _, tag = image.partition("@")[0].rpartition(":")
        assert repo and tag and tag != "latest" and not tag.isalpha(), f"FROM {image}: pin an exact tag"
        assert re.search(r"\d+\.\d+", tag), f"FROM {image}: the tag must name a version"
    users = [args.strip() for op, args in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    checks = [args for op, args in steps if op == "HEALTHCHECK"]
    assert len(checks) == 1 and "CMD" in checks[0] and "NONE" not in checks[0]
    text = (DOCKER / name).read_text()
    assert ":latest" not in text
    for op, args in steps:
        if op == "COPY" and "/tmp/plexlab-src" not in args:
            source = next(a for a in args.split() if not a.startswith("--"))
            context = ROOT if name == "Dockerfile" else DOCKER
            assert (context / source).exists(), f"COPY {source}"


def test_plexlab_image_installs_pinned_cuda_torch_and_the_package() -> None:
    steps = instructions(DOCKER / "Dockerfile")
    args = dict((op, a) for op, a in steps if op == "ARG" for op, a in [tuple(a.split("=", 1))])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", args["TORCH_INDEX_URL"])
    runs = [a for op, a in steps if op == "RUN"]
    torch_step = next(r for r in runs if '"torch==${TORCH_VERSION}"' in r)
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_step
    package_step = next(r for r in runs if "[all]" in r)
    assert "--constraint" in package_step, "torch must stay the pinned CUDA build"
    assert any(op == "ENTRYPOINT" and "tini" in a for op, a in steps)


def test_dockerignore_keeps_secrets_and_environments_out() -> None:
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for pattern in ("docker/secrets", "**/.env", "**/.venv", "**/.git", "mlflow.db"):
        assert pattern in ignored
    # The MLflow image's context is docker/ itself: everything is left out but the files it copies.
    lines = [
        line
        for line in (DOCKER / "mlflow.Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    copied = [a.split()[-2] for op, a in instructions(DOCKER / "mlflow.Dockerfile") if op == "COPY"]
    assert lines == ["*", *(f"!{source}" for source in copied)]


# --- entry points ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["entrypoint.sh", "mlflow-entrypoint.sh", "make-secrets.sh"])
def test_shell_scripts_parse(script: str) -> None:
    subprocess.run(["sh", "-n", str(DOCKER / script)], check=True)


def python_path() -> str:
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def write_secrets(directory: Path, **values: str) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, value in values.items():
        paths[name] = directory / name
        paths[name].write_text(value)
    return paths


def run_mlflow_entrypoint(
    tmp_path: Path, db_password: str, *command: str, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    secrets = write_secrets(tmp_path / "secrets", db=db_password, admin="adminpw-123", flask="flask-key-456")
    env = {
        "PATH": python_path(),
        "TMPDIR": str(tmp_path),
        "MLFLOW_DB_HOST": "postgres",
        "MLFLOW_DB_NAME": "mlflow",
        "MLFLOW_DB_USER": "mlflow",
        "MLFLOW_DB_PASSWORD_FILE": str(secrets["db"]),
        "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(secrets["admin"]),
        "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE": str(secrets["flask"]),
        **(extra_env or {}),
    }
    return subprocess.run(
        ["sh", str(DOCKER / "mlflow-entrypoint.sh"), *command], env=env, capture_output=True, text=True
    )


def test_mlflow_entrypoint_builds_the_postgres_uri_and_a_private_auth_config(tmp_path: Path) -> None:
    done = run_mlflow_entrypoint(tmp_path, "p@ss:w/rd%", "env")
    assert done.returncode == 0, done.stderr
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    uri = "postgresql+psycopg2://mlflow:p%40ss%3Aw%2Frd%25@postgres:5432/mlflow"
    assert env["MLFLOW_BACKEND_STORE_URI"] == uri
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "adminpw-123"
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == "admin"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "flask-key-456"
    ini = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    config = configparser.ConfigParser()  # what mlflow.server.auth.config reads it with
    config.read(ini)
    assert config["mlflow"]["database_uri"] == uri
    assert config["mlflow"]["default_permission"] == "READ"
    assert config["mlflow"]["authorization_function"].endswith("authenticate_request_basic_auth")


def test_mlflow_entrypoint_refuses_placeholders_and_missing_secrets(tmp_path: Path) -> None:
    done = run_mlflow_entrypoint(tmp_path, "change-me", "true")
    assert done.returncode == 2 and "placeholder" in done.stderr
    done = run_mlflow_entrypoint(tmp_path / "empty", "", "true")
    assert done.returncode == 2 and "postgres_password" in done.stderr


RECORDING_RAY_USER = """\
#!/bin/sh
# Stands in for mlflow-ray-user: records what the entrypoint hands it.
{ echo "user=$MLFLOW_RAY_USERNAME"; echo "password_file=$MLFLOW_RAY_PASSWORD_FILE"; \\
  echo "admin=$MLFLOW_AUTH_ADMIN_USERNAME"; cat "$MLFLOW_AUTH_CONFIG_PATH"; } > "$RECORD"
exit "${RAY_USER_STATUS:-0}"
"""


def test_mlflow_entrypoint_sets_up_the_ray_account_before_the_server(tmp_path: Path) -> None:
    shim = tmp_path / "bin" / "mlflow-ray-user"
    shim.parent.mkdir()
    shim.write_text(RECORDING_RAY_USER)
    shim.chmod(0o755)
    record = tmp_path / "record"
    extra = {
        "PATH": f"{shim.parent}{os.pathsep}{python_path()}",
        "MLFLOW_RAY_USERNAME": "plexlab-ray",
        "MLFLOW_RAY_PASSWORD_FILE": "/run/secrets/mlflow_ray_password",
        "RECORD": str(record),
    }
    done = run_mlflow_entrypoint(tmp_path, "dbpw", "echo", "server-started", extra_env=extra)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "server-started"
    seen = record.read_text()
    assert "user=plexlab-ray\npassword_file=/run/secrets/mlflow_ray_password\nadmin=admin\n" in seen
    assert "database_uri = postgresql+psycopg2://mlflow:dbpw@postgres:5432/mlflow" in seen, (
        "the server's store"
    )
    # The server never starts when the account cannot be set up.
    done = run_mlflow_entrypoint(
        tmp_path, "dbpw", "echo", "server-started", extra_env={**extra, "RAY_USER_STATUS": "2"}
    )
    assert done.returncode == 2 and "server-started" not in done.stdout


def test_mlflow_ray_user_is_a_non_admin_editor_and_rotates_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """docker/mlflow-ray-user.py on a SQLite user store, as the MLflow entrypoint runs it (in this process:
    importing MLflow's auth app once keeps the test short)."""
    pytest.importorskip("flask_wtf", reason="MLflow's auth store needs mlflow[auth] (Flask-WTF)")
    import runpy

    from mlflow.server.auth.permissions import GrantLoadKey
    from mlflow.server.auth.requirements import fold_grants_for_key
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    ini = tmp_path / "auth.ini"
    ini.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{tmp_path / 'auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    password_file = tmp_path / "mlflow_ray_password"
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.setenv("MLFLOW_RAY_PASSWORD_FILE", str(password_file))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    main = runpy.run_path(str(DOCKER / "mlflow-ray-user.py"))["main"]

    def run(username: str, password: str | None) -> tuple[int, str, str]:
        monkeypatch.setenv("MLFLOW_RAY_USERNAME", username)
        if password is None:
            password_file.unlink(missing_ok=True)
        else:
            password_file.write_text(password)
        status = main()
        out, err = capsys.readouterr()
        return status, out, err

    status, out, err = run("plexlab-ray", "first-pw-0123456789")
    assert status == 0 and "created plexlab-ray" in out, err
    status, out, err = run("plexlab-ray", "second-pw-0123456789\n")  # a rotated secret file
    assert status == 0 and "updated plexlab-ray" in out, err

    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{tmp_path / 'auth.db'}")
    user = store.get_user("plexlab-ray")
    assert user.is_admin is False
    assert store.authenticate_user("plexlab-ray", "second-pw-0123456789")
    assert not store.authenticate_user("plexlab-ray", "first-pw-0123456789"), "the old password is gone"
    grants = store.list_grants(user.id, "default", {"experiment"})
    for experiment_id in ("0", "123"):  # any experiment, including ones the admin created
        assert fold_grants_for_key(grants, GrantLoadKey("experiment", experiment_id)).name == "EDIT"

    for username, password, message in [
        ("admin", "pw-0123456789", "is the admin account"),
        ("plexlab-ray", None, "cannot read MLFLOW_RAY_PASSWORD_FILE"),
        ("plexlab-ray", "change-me", "placeholder"),
    ]:
        status, _, err = run(username, password)
        assert status == 2, err
        (line,) = err.strip().splitlines()
        assert line.startswith("mlflow-ray-user: ") and message in line


def test_plexlab_entrypoint_writes_mlflow_credentials_the_client_reads(tmp_path: Path) -> None:
    secrets = write_secrets(tmp_path / "secrets", mlflow="s3cret-pw", token="tok")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD_FILE": str(secrets["mlflow"]),
        "RAY_AUTH_TOKEN_PATH": str(secrets["token"]),
    }
    done = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "env"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "s3cret-pw" not in done.stdout, "the password is not exported to the command"
    credentials = home / ".mlflow" / "credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    config = configparser.ConfigParser()  # as mlflow.utils.credentials reads ~/.mlflow/credentials
    config.read(credentials)
    assert dict(config["mlflow"]) == {
        "mlflow_tracking_username": "alice",
        "mlflow_tracking_password": "s3cret-pw",
    }

    assert stat.S_IMODE(credentials.parent.stat().st_mode) == 0o700

    # A restart finds the file of the last start, perhaps loosened meanwhile: it is written private again.
    credentials.chmod(0o644)
    (home / ".mlflow").chmod(0o755)
    done = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "true"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.parent.stat().st_mode) == 0o700

    # No account name: refused, rather than guessing one.
    done = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "true"],
        env={k: v for k, v in env.items() if k != "MLFLOW_TRACKING_USERNAME"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "MLFLOW_TRACKING_USERNAME" in done.stderr

    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "missing")
    done = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "true"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "RAY_AUTH_TOKEN_PATH" in done.stderr


def test_make_secrets_creates_private_hex_secrets_once(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    env = {**os.environ, "PLEXLAB_SECRETS_DIR": str(target)}
    subprocess.run(["sh", str(DOCKER / "make-secrets.sh")], env=env, check=True, capture_output=True)
    compose = yaml.safe_load(COMPOSE.read_text())
    assert sorted(p.name for p in target.iterdir()) == sorted(compose["secrets"])
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    first = {p.name: p.read_text() for p in target.iterdir()}
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in first.values())
    subprocess.run(["sh", str(DOCKER / "make-secrets.sh")], env=env, check=True, capture_output=True)
    assert {p.name: p.read_text() for p in target.iterdir()} == first, "re-running never rotates secrets"


# --- the MLflow server as compose runs it (slow: starts a server) ----------------------------------------


@pytest.mark.slow
def test_mlflow_server_with_the_compose_flags_enforces_auth_and_hosts(tmp_path: Path, services: dict) -> None:
    """The compose command line, on SQLite instead of PostgreSQL: basic auth, allowed hosts, artifacts, and
    the Ray nodes' account as mlflow-ray-user sets it up: it logs runs in the admin's experiments, and
    cannot manage users."""
    pytest.importorskip("flask_wtf", reason="the basic-auth app needs mlflow[auth] (Flask-WTF)")
    import time
    import urllib.error
    import urllib.request

    port = free_port()
    command = [resolve(str(part)) for part in services["mlflow"]["command"]]
    replace = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--allowed-hosts": f"mlflow:5000,127.0.0.1:{port}",
        "--artifacts-destination": str(tmp_path / "artifacts"),
        "--workers": "1",
    }
    for flag, value in replace.items():
        command[command.index(flag) + 1] = value
    (tmp_path / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    (tmp_path / "ray_pw").write_text("ray-pw-0123456789")
    ray_user = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
        "MLFLOW_RAY_USERNAME": "plexlab-ray",
        "MLFLOW_RAY_PASSWORD_FILE": str(tmp_path / "ray_pw"),
    }
    subprocess.run(
        [sys.executable, str(DOCKER / "mlflow-ray-user.py")], env=ray_user, check=True, timeout=300
    )
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-pw-0123",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "key",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    # Its own process group: `mlflow server` runs uvicorn as a child, and both must go at the end.
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"

    import base64

    def call(path: str, auth: bool | str = False, host: str | None = None, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data=data)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if auth:
            user = "admin:admin-pw-0123" if auth is True else auth
            request.add_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
        if host:
            request.add_header("Host", host)
        try:
            # The first authenticated call bootstraps the admin user (a slow password hash).
            with urllib.request.urlopen(request, timeout=60) as response:
                payload = response.read()
                is_json = response.headers.get_content_type() == "application/json"
                return response.status, json.loads(payload) if is_json else {}
        except urllib.error.HTTPError as error:
            return error.code, {}

    def status(path: str, auth: bool | str = False, host: str | None = None, body: dict | None = None) -> int:
        return call(path, auth, host, body)[0]

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if status("/health") == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the MLflow server did not start"
            time.sleep(1)
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert status(search) == 401
        assert status(search, auth=True) == 200
        assert status(search, auth=True, host="mlflow:5000") == 200
        assert status(search, auth=True, host="evil.example") == 403

        ray = "plexlab-ray:ray-pw-0123456789"
        code, made = call("/api/2.0/mlflow/experiments/create", auth=True, body={"name": "by-admin"})
        assert code == 200, "the admin creates an experiment"
        run = {"experiment_id": made["experiment_id"], "start_time": 0}
        assert status("/api/2.0/mlflow/runs/create", auth=ray, body=run) == 200, (
            "EDIT on the admin's experiment"
        )
        assert status("/api/2.0/mlflow/runs/create", auth="plexlab-ray:wrong", body=run) == 401
        new_user = {"username": "mallory", "password": "mallory-pw-0123"}
        assert status("/api/2.0/mlflow/users/create", auth=ray, body=new_user) == 403, "not an admin"
    finally:
        stop(server)
