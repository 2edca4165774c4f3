# syntax=docker/dockerfile:1
# The shortener service: gunicorn's master with aiohttp/uvloop workers on port 8080.
# Build: docker build -t shortener .   Run: see docs/DEPLOYMENT.md (compose.yml wires it up).

# Builder: compilers are here only for a dependency without a wheel for this platform.
FROM python:3.11.10-slim-bookworm AS builder

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# .dockerignore is an allowlist: only the package, its metadata and conf/ get here.
COPY . .
# One folder of wheels: the project's own and every dependency's, for an offline install.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .


# Runtime: the installed package and its settings, no compilers, no build tools.
FROM python:3.11.10-slim-bookworm

LABEL org.opencontainers.image.title="shortener" \
      org.opencontainers.image.description="URL shortener: aiohttp workers on uvloop under gunicorn"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SHORTENER_WORKERS=2 \
    SHORTENER_GUNICORN_CONFIG=/app/conf/gunicorn.conf.py \
    PROMETHEUS_MULTIPROC_DIR=/run/shortener-metrics

# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 shortener \
    && useradd --system --uid 10001 --gid shortener --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin shortener \
    && install -d -o shortener -g shortener -m 0700 /run/shortener-metrics

# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/shortener-*.whl

WORKDIR /app
COPY conf/ /app/conf/

USER 10001:10001
EXPOSE 8080

# Liveness only: /readyz belongs to the load balancer's decision, not to restarts.
# Slim images have no curl; urlopen raises on anything but a 2xx, which exits non-zero.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

# Exec form, so gunicorn's master is PID 1 and gets SIGTERM for its graceful shutdown.
# serve reads the worker count from SHORTENER_WORKERS; other commands: migrate, keys create.
ENTRYPOINT ["shortener"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
