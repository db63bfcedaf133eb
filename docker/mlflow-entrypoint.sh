#!/bin/sh
# Entry point of the MLflow server image: build the store URIs and the basic-auth configuration from
# secret files at start-up, so no password sits in the compose file, in the image or in `docker inspect`.
#
# Reads (all set by compose.yaml):
#   MLFLOW_DB_HOST, MLFLOW_DB_PORT, MLFLOW_DB_NAME, MLFLOW_DB_USER, MLFLOW_DB_PASSWORD_FILE
#   MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD_FILE   the admin account created on first start
#   MLFLOW_FLASK_SERVER_SECRET_KEY_FILE                          CSRF key of the basic-auth app
#   MLFLOW_RAY_USERNAME, MLFLOW_RAY_PASSWORD_FILE                the Ray nodes' account (optional): created
#       or updated by mlflow-ray-user before the server starts, not an admin, EDIT on every experiment
# Exports MLFLOW_BACKEND_STORE_URI (read by `mlflow server`), MLFLOW_AUTH_CONFIG_PATH (a private ini whose
# database_uri points the user store at the same PostgreSQL database: its tables and its alembic version
# table are separate from the tracking store's), MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY.
set -eu

read_secret() {  # read_secret NAME FILE
    if [ ! -s "$2" ]; then
        echo "mlflow-entrypoint: secret $1 ($2) is missing or empty" >&2
        exit 2
    fi
    value=$(cat "$2")
    case "$value" in
        *change-me*) echo "mlflow-entrypoint: secret $1 still holds the placeholder; run docker/make-secrets.sh" >&2
                     exit 2 ;;
    esac
    printf '%s' "$value"
}

db_password=$(read_secret postgres_password "${MLFLOW_DB_PASSWORD_FILE:?}")
MLFLOW_AUTH_ADMIN_PASSWORD=$(read_secret mlflow_admin_password "${MLFLOW_AUTH_ADMIN_PASSWORD_FILE:?}")
MLFLOW_FLASK_SERVER_SECRET_KEY=$(read_secret mlflow_flask_secret_key "${MLFLOW_FLASK_SERVER_SECRET_KEY_FILE:?}")
export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"

# Percent-encode the password for the URI.
db_password_q=$(DBPW="$db_password" python -c 'import os, urllib.parse; print(urllib.parse.quote(os.environ["DBPW"], safe=""))')
MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${MLFLOW_DB_USER:?}:${db_password_q}@${MLFLOW_DB_HOST:?}:${MLFLOW_DB_PORT:-5432}/${MLFLOW_DB_NAME:?}"
export MLFLOW_BACKEND_STORE_URI
unset db_password db_password_q

# The basic-auth ini: private (0600) and outside any volume. '%' is configparser's interpolation sign.
auth_dir=$(mktemp -d)
MLFLOW_AUTH_CONFIG_PATH="$auth_dir/basic_auth.ini"
(
    umask 077
    cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = $(printf '%s' "$MLFLOW_BACKEND_STORE_URI" | sed 's/%/%%/g')
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
)
export MLFLOW_AUTH_CONFIG_PATH

# The Ray nodes log as their own non-admin account, so a compromised node cannot manage users. Run on
# every start: a new password in the secret file rotates the account's password.
if [ -n "${MLFLOW_RAY_USERNAME:-}" ]; then
    mlflow-ray-user || exit 2
fi

exec "$@"
