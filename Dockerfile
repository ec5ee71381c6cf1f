# chronoq: one image for every process (api, scheduler, worker, db upgrade, dev).
#   docker build -t chronoq .
#   docker run --rm chronoq --help
# The builder stage makes wheels for chronoq and its dependencies; the final stage installs
# only those wheels (no compiler, no pip cache, no source tree) and runs as an unprivileged
# user. Redis (broker, event bridge) and Prometheus metrics are core dependencies.

FROM python:3.11-slim AS builder
# build-essential only matters when a dependency has no wheel for this platform
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY chronoq ./chronoq
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CHRONOQ_LOG_FORMAT=json
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels chronoq \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /app chronoq
WORKDIR /app
# the example handlers the compose file and the Kubernetes manifests run
# (--app deploy.example_app:app); mount or build your own app in their place
COPY deploy/example_app.py ./deploy/example_app.py
USER 10001:10001
EXPOSE 8000 8081 9100
# /healthz of this process: the health port if set (scheduler, worker), else the API port
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-m", "chronoq.health"]
ENTRYPOINT ["chronoq"]
CMD ["--help"]
