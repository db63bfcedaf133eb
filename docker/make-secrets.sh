#!/bin/sh
# Create the secret files compose.yaml mounts (docker/secrets/ by default, or $PLEXLAB_SECRETS_DIR).
# Existing files are kept, so running it again never rotates a password behind a running stack.
# To rotate one: delete its file, run this again, then `docker compose up -d --force-recreate`. The Ray
# nodes' MLflow password (mlflow_ray_password) is re-applied by the MLflow container at every start; the
# admin password is only read when the admin account is first created, so change it in the MLflow UI too.
# Values are hex: no characters that need quoting in URIs or in ini files.
set -eu
dir=${PLEXLAB_SECRETS_DIR:-$(dirname "$0")/secrets}
mkdir -p "$dir"
chmod 700 "$dir"
for name in postgres_password mlflow_admin_password mlflow_ray_password mlflow_flask_secret_key ray_auth_token; do
    if [ ! -s "$dir/$name" ]; then
        python3 -c 'import secrets; print(secrets.token_hex(32), end="")' > "$dir/$name"
        # Readable by the containers' unprivileged users; the 0700 directory keeps other host users out.
        chmod 644 "$dir/$name"
        echo "created $dir/$name"
    fi
done
