#!/bin/sh
# Entry point of the plexlab image: turn mounted secret files into credentials, then run the command.
#
# MLFLOW_TRACKING_PASSWORD_FILE (a docker secret, or a Kubernetes Secret mounted as a file): written to
# ~/.mlflow/credentials (mode 600 in a 700 folder), which the MLflow client reads whenever
# MLFLOW_TRACKING_PASSWORD is unset. A file rather than an exported variable, so that `docker compose exec`
# shells and every Ray worker process on this node authenticate as well, while the password shows neither
# in `docker inspect` / the pod spec nor in the environment Ray records for its processes.
# The Ray token needs nothing here: Ray reads RAY_AUTH_TOKEN_PATH itself.
set -eu

if [ -n "${MLFLOW_TRACKING_PASSWORD_FILE:-}" ]; then
    if [ ! -s "$MLFLOW_TRACKING_PASSWORD_FILE" ]; then
        echo "plexlab-entrypoint: $MLFLOW_TRACKING_PASSWORD_FILE is missing or empty" >&2
        exit 2
    fi
    if [ -z "${MLFLOW_TRACKING_USERNAME:-}" ]; then
        echo "plexlab-entrypoint: MLFLOW_TRACKING_PASSWORD_FILE is set but MLFLOW_TRACKING_USERNAME is not" >&2
        exit 2
    fi
    password=$(cat "$MLFLOW_TRACKING_PASSWORD_FILE")
    case "$password" in
        *%*) echo "plexlab-entrypoint: the MLflow password must not contain '%' (configparser syntax)" >&2
             exit 2 ;;
    esac
    mkdir -p "$HOME/.mlflow"
    chmod 700 "$HOME/.mlflow"
    # Removed first: a file left by an earlier start keeps its old mode when overwritten.
    rm -f "$HOME/.mlflow/credentials"
    (
        umask 077
        printf '[mlflow]\nmlflow_tracking_username = %s\nmlflow_tracking_password = %s\n' \
            "$MLFLOW_TRACKING_USERNAME" "$password" > "$HOME/.mlflow/credentials"
    )
    unset password
fi

if [ -n "${RAY_AUTH_TOKEN_PATH:-}" ] && [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
    echo "plexlab-entrypoint: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty" >&2
    exit 2
fi

exec "$@"
