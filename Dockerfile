# syntax=docker/dockerfile:1
# Build stage: wheels for the worker and its dependencies (compilers stay here).
FROM python:3.11-slim AS build
# A C compiler for the worker's two C modules (worker/lambda_compat/_kafka_rows.c, the
# Lambda event builder; worker/sources/kafka/_librdkafka_wrap.c, librdkafka's records); the
# final stage gets the built wheel only. Debian's current gcc: pinning a point release
# would break the build at every Debian security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY worker ./worker
# With the librdkafka extra: source.client is a setting, not a rebuild (its wheel bundles
# librdkafka).
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[librdkafka]"

# Final stage: the worker, the example handlers, a non-root user, nothing else.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home worker
WORKDIR /app
COPY handlers ./handlers
COPY load ./load
COPY config/worker.example.toml /etc/streamworker/worker.toml
USER 10001
EXPOSE 9108
# Probes hit the metrics port; the worker answers /healthz while its event loop turns.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2)"]
# Exec form: the worker is PID 1 and receives SIGTERM itself (it drains, commits, exits 0).
ENTRYPOINT ["worker", "run"]
CMD ["--config", "/etc/streamworker/worker.toml", "--set", "metrics.listen=0.0.0.0:9108"]
