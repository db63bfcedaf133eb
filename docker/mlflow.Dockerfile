# syntax=docker/dockerfile:1
# MLflow tracking server for plexlab: PostgreSQL backend store, proxied artifacts, basic authentication.
# Pinned: base image by exact tag, packages by exact version (pin the digest too for bit-for-bit rebuilds).
FROM python:3.12.12-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true

# mlflow[auth] brings Flask-WTF (CSRF protection of the basic-auth app); psycopg2 talks to PostgreSQL.
RUN pip install "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13" \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts

COPY --chmod=0755 mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint
COPY --chmod=0755 mlflow-ray-user.py /usr/local/bin/mlflow-ray-user

USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000

# /health is exempt from authentication and from the allowed-hosts check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]

ENTRYPOINT ["mlflow-entrypoint"]
CMD ["mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0", "--port", "5000"]
