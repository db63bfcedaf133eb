#!/bin/sh
# Entry point of the plexlab image: turn mounted secret files into credentials, then run the command.
#
# MLFLOW_TRACKING_PASSWORD_FILE (a docker/k8s secret file): written to ~/.mlflow/credentials, which the
# MLflow client reads whenever MLFLOW_TRACKING_PASSWORD is unset. A file rather than an exported variable,
# so that `docker compose exec` shells and every Ray worker process authenticate as well, and the password
# does not show in `docker inspect`.
# The Ray token needs nothing here: Ray reads RAY_AUTH_TOKEN_PATH itself.
set -eu

if [ -n "${MLFLOW_TRACKING_PASSWORD_FILE:-}" ]; then
    if [ ! -s "$MLFLOW_TRACKING_PASSWORD_FILE" ]; then
        echo "plexlab-entrypoint: $MLFLOW_TRACKING_PASSWORD_FILE is missing or empty" >&2
        exit 2
    fi
    password=$(cat "$MLFLOW_TRACKING_PASSWORD_FILE")
    case "$password" in
        *%*) echo "plexlab-entrypoint: the MLflow password must not contain '%' (configparser syntax)" >&2
             exit 2 ;;
    esac
    mkdir -p "$HOME/.mlflow"
    (
        umask 077
        printf '[mlflow]\nmlflow_tracking_username = %s\nmlflow_tracking_password = %s\n' \
            "${MLFLOW_TRACKING_USERNAME:-admin}" "$password" > "$HOME/.mlflow/credentials"
    )
    unset password
fi

if [ -n "${RAY_AUTH_TOKEN_PATH:-}" ] && [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
    echo "plexlab-entrypoint: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty" >&2
    exit 2
fi

exec "$@"
