"""Credentials never leave, names never become paths, local Ray is locked down, impossible schedules are
config errors (the platform side of the security audit)."""

from __future__ import annotations

import http.server
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from _experiment import write_experiment
from plexlab import cli, local_ray, tracking, tracking_uri

PASSWORD = "canary-d41d8cd98f00b204"


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 that records every Authorization header it is sent (and answers 404)."""
    seen: list[str] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            seen.append(self.headers.get("Authorization") or "")
            self.send_response(404)
            self.end_headers()

        do_GET = do_POST = _any

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("plexlab: error: ") and "\n" not in err, err
    return err


def test_a_files_tracking_server_gets_no_credentials(workdir, credentials, listener, capsys) -> None:
    url, seen = listener
    config = write_experiment(workdir)
    assert cli.main(["fit", str(config), "--set", f"tracking.uri={url}"]) == 2
    err = _one_line_error(capsys)
    assert "tracking.uri" in err and "--allow-tracking-uri" in err
    assert seen == [], "the file's server was contacted"


def test_a_files_server_on_another_host_than_the_users_is_refused(
    workdir, monkeypatch, listener, capsys
) -> None:
    url, seen = listener
    monkeypatch.setattr(tracking_uri, "USER_URI", "https://mlflow.example.org")
    config = write_experiment(workdir, tracking={"uri": url})
    assert cli.main(["fit", str(config)]) == 2
    err = _one_line_error(capsys)
    assert "MLFLOW_TRACKING_URI names mlflow.example.org" in err and seen == []


def test_the_user_can_allow_a_files_server(workdir, credentials, listener, capsys) -> None:
    url, seen = listener
    config = write_experiment(workdir, tracking={"uri": url})
    assert cli.main(["fit", str(config), "--allow-tracking-uri"]) == 2  # the listener is not an MLflow server
    assert seen and seen[0].startswith("Basic "), "with the user's consent the server is used"


def test_userinfo_is_stripped_before_a_uri_is_recorded() -> None:
    assert (
        tracking.redact("https://alice:pw@mlflow.example.org:8443/x") == "https://mlflow.example.org:8443/x"
    )
    assert tracking.redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


@pytest.mark.parametrize("name", ["../../../x", "/abs/path", "a/b", "..", "a..b", ".hidden", ""])
def test_an_experiment_name_that_is_a_path_is_refused(workdir, capsys, name: str) -> None:
    config = write_experiment(workdir)
    assert cli.main(["fit", str(config), "--set", f"name={name}"]) == 2
    err = _one_line_error(capsys)
    assert ": name: " in err and not (workdir / "plexlab_runs").exists()


def test_nothing_secret_is_forwarded_to_a_cluster(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.org")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", "/etc/ssl/ca.pem")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", PASSWORD)
    env = local_ray.forwarded_env()
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example.org"
    assert env["MLFLOW_TRACKING_SERVER_CERT_PATH"] == "/etc/ssl/ca.pem"
    assert PASSWORD not in str(env) and "MLFLOW_TRACKING_USERNAME" in env
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://alice:{PASSWORD}@mlflow.example.org")
    assert PASSWORD not in str(local_ray.forwarded_env())


def _fake_ray_init(monkeypatch: pytest.MonkeyPatch, token: Path) -> list[dict]:
    calls: list[dict] = []

    def init(**kwargs) -> None:
        calls.append({**kwargs, "umask": os.umask(0o022)})
        token.parent.mkdir(parents=True, exist_ok=True)
        token.write_text("token")
        token.chmod(0o644)  # as Ray writes it

    monkeypatch.setattr(local_ray.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(local_ray.ray, "init", init)
    monkeypatch.setattr(local_ray, "TOKEN_FILE", token)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def test_local_ray_refuses_to_start_without_authentication(monkeypatch, tmp_path) -> None:
    calls = _fake_ray_init(monkeypatch, tmp_path / ".ray" / "auth_token")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(local_ray.InsecureRayError, match=r"RAY_AUTH_MODE=disabled .* --insecure-local-ray"):
        local_ray.start(None)
    assert calls == []
    assert local_ray.start(None, insecure=True) is True and len(calls) == 1


def test_local_ray_is_private_to_the_user(monkeypatch, tmp_path) -> None:
    token = tmp_path / ".ray" / "auth_token"
    calls = _fake_ray_init(monkeypatch, token)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert local_ray.start(None) is True
    (kwargs,) = calls
    assert kwargs["umask"] == 0o077, "Ray's files are created private to the user"
    assert kwargs["runtime_env"]["env_vars"] == local_ray.TRIAL_ENV, "local trials inherit; nothing forwarded"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_insecure_ray_through_the_cli_is_one_line(workdir, monkeypatch, capsys, tmp_path) -> None:
    _fake_ray_init(monkeypatch, tmp_path / ".ray" / "auth_token")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    config = write_experiment(
        workdir, sweep={"num_samples": 1, "space": {"model.hidden": {"choice": [4, 8]}}}
    )
    assert cli.main(["sweep", str(config)]) == 2
    assert "RAY_AUTH_MODE=disabled" in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("scheduler", "key"),
    [
        ({"name": "asha", "grace_period": 10}, "sweep.scheduler.grace_period"),
        ({"name": "median", "grace_period": 7}, "sweep.scheduler.grace_period"),
        ({"name": "pbt", "perturbation_interval": 5}, "sweep.scheduler.perturbation_interval"),
    ],
)
def test_a_schedule_the_epochs_cannot_reach_is_a_config_error(workdir, capsys, scheduler, key) -> None:
    sweep = {"num_samples": 2, "space": {"model.lr": {"loguniform": [1e-3, 1e-2]}}, "scheduler": scheduler}
    config = write_experiment(workdir, sweep=sweep)
    data = yaml.safe_load(config.read_text())
    data["trainer"]["max_epochs"] = 5
    config.write_text(yaml.safe_dump(data))
    assert cli.main(["sweep", str(config)]) == 2
    assert f": {key}: " in _one_line_error(capsys)


def test_the_quickstart_with_too_few_epochs_is_one_line(workdir, capsys) -> None:
    root = Path(__file__).resolve().parents[1]
    quickstart = yaml.safe_load((root / "sweeps" / "quickstart.yaml").read_text())
    data_path = quickstart["data"]["path"]
    if not data_path.startswith("bundled:"):  # a path relative to the repository root, as the README runs it
        quickstart["data"]["path"] = str((root / data_path).resolve())
        if not Path(quickstart["data"]["path"]).exists():
            pytest.skip(f"the quickstart's data is not here: {data_path}")
    config = workdir / "quickstart.yaml"
    config.write_text(yaml.safe_dump(quickstart))
    assert cli.main(["sweep", str(config), "--set", "trainer.max_epochs=5"]) == 2
    assert "sweep.scheduler.grace_period" in _one_line_error(capsys)


@pytest.mark.ray
def test_a_canary_password_appears_in_no_ray_log_param_tag_or_artifact(
    workdir, credentials, monkeypatch
) -> None:
    import tempfile

    from plexlab import api

    # A short private folder for Ray's session (its socket paths must stay under 108 characters).
    ray_tmp = Path(tempfile.mkdtemp(prefix="plxray"))
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    sweep = {
        "num_samples": 2,
        "space": {"model.lr": {"loguniform": [1e-3, 1e-2]}},
        "resources": {"cpu": 1},
        "max_concurrent": 1,
    }
    config = write_experiment(workdir, sweep=sweep)
    result = api.sweep(config, storage=str(workdir / "sweeps"))
    assert len(result.trials) == 2
    sessions = list(ray_tmp.rglob("session_*"))
    assert sessions, f"Ray wrote no session under {ray_tmp}"
    leaks = [
        str(path)
        for root in (ray_tmp, workdir)
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink() and PASSWORD.encode() in path.read_bytes()
    ]
    assert leaks == [], f"the password was written to {leaks}"
    token = local_ray.TOKEN_FILE
    if token.exists():
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
    logs = [p for p in ray_tmp.rglob("*.log") if p.is_file()]
    assert logs and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in logs), "Ray's logs are private"


def test_trial_files_off_shared_storage_go_to_a_private_folder(monkeypatch, tmp_path) -> None:
    import tempfile

    from plexlab.errors import PlexlabError
    from plexlab.sweep_trial import trial_folder

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    folder = trial_folder("s3://bucket/plexlab/sweep-1", "trial_1")
    root = tmp_path / f"plexlab_trials-{os.getuid()}"
    assert folder == root / "sweep-1" / "trial_1" and stat.S_IMODE(root.stat().st_mode) == 0o700
    root.chmod(0o777)  # planted or loosened by someone else
    with pytest.raises(PlexlabError, match="not a private folder"):
        trial_folder("s3://bucket/plexlab/sweep-1", "trial_1")
