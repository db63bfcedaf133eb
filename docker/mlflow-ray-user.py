#!/usr/bin/env python3
"""Create or update the MLflow account the Ray nodes log as: not an admin, EDIT on every experiment.

Run by mlflow-entrypoint.sh before the server starts, on the basic-auth user store named by
MLFLOW_AUTH_CONFIG_PATH (the database the server then uses), through MLflow's own auth store. Doing it
before the server starts means no admin password on the wire and no race with the first request.
Reads:
  MLFLOW_RAY_USERNAME       the account (must differ from the admin account)
  MLFLOW_RAY_PASSWORD_FILE  its password, a docker secret; a new password here rotates it on restart
Exit status 0 when the account is in place, 2 with one line on stderr when a setting is unusable.
"""

import os
import sys
from pathlib import Path

# Run experiments, log runs, metrics and artifacts in any experiment; no user or permission management.
EXPERIMENT_GRANT = ("experiment", "*", "EDIT")


def fail(message: str) -> int:
    print(f"mlflow-ray-user: {message}", file=sys.stderr)
    return 2


def main() -> int:
    username = os.environ.get("MLFLOW_RAY_USERNAME", "").strip()
    password_file = os.environ.get("MLFLOW_RAY_PASSWORD_FILE", "")
    if not username or not password_file:
        return fail("MLFLOW_RAY_USERNAME and MLFLOW_RAY_PASSWORD_FILE must both be set")
    try:
        password = Path(password_file).read_text().strip()
    except OSError as error:
        return fail(f"cannot read MLFLOW_RAY_PASSWORD_FILE={password_file} ({error.strerror})")
    if not password or "change-me" in password:
        return fail(
            f"secret mlflow_ray_password ({password_file}) is empty or a placeholder; run make-secrets.sh"
        )

    from mlflow.server.auth.config import read_auth_config
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    config = read_auth_config()
    if username == config.admin_username:
        return fail(f"MLFLOW_RAY_USERNAME={username} is the admin account; the Ray nodes need their own")
    store = SqlAlchemyStore()
    store.init_db(config.database_uri)  # creates or migrates the user tables, as the server would
    if store.has_user(username):
        # is_admin=False also demotes an account someone promoted by hand.
        store.update_user(username, password=password, is_admin=False)
        action = "updated"
    else:
        store.create_user(username, password, is_admin=False)
        action = "created"
    store.grant_user_permission(username, *EXPERIMENT_GRANT)
    print(f"mlflow-ray-user: {action} {username} (not admin, {EXPERIMENT_GRANT[2]} on all experiments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
