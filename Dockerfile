# syntax=docker/dockerfile:1
# airflow-keda-scaler: `docker build -t airflow-keda-scaler:0.1.0 .`
# tests/test_dockerfile.py runs these same RUN steps (wheel, clean install, serve, health) on every test run.

# Stage 1: build the wheels of the scaler and its dependencies (binary wheels; no compiler needed).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scaler ./scaler
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: only the installed wheels; no build tools, no pip cache, no source tree.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels python -m pip install --no-cache-dir --no-index --find-links /wheels airflow-keda-scaler
# A numeric user, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
# gRPC for KEDA; HTTP for /metrics, /healthz, /readyz.
EXPOSE 6000 8080
ENTRYPOINT ["airflow-keda-scaler"]
CMD ["serve"]
