# syntax=docker/dockerfile:1
# Build: docker build -t authsvc .
# Run:   docker run -p 8000:8000 --env-file deploy/production.env -v authsvc-data:/data authsvc
# deploy/production.env comes from deploy/production.env.example (not from .env.example, which
# is for development). Production mode: SECRET_KEY and JWT_ISSUER must be set (the service
# refuses to start otherwise). The build stage installs the pinned, hash-checked dependencies
# of requirements.lock (pip-compile --generate-hashes of pyproject.toml), then the project
# itself without resolving anything; the runtime stage puts the source, alembic.ini and
# migrations/ in /srv and first on PYTHONPATH, so `python -m app migrate` finds its migrations.
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY app ./app
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/srv \
    ENVIRONMENT=production \
    DATABASE_URL=sqlite+aiosqlite:////data/auth.db \
    WORKERS=2
RUN groupadd --system --gid 10001 authsvc \
    && useradd --system --uid 10001 --gid authsvc --home-dir /srv --shell /usr/sbin/nologin authsvc \
    && mkdir -p /data && chown authsvc:authsvc /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
COPY --chown=root:root alembic.ini ./
COPY --chown=root:root migrations ./migrations
COPY --chown=root:root app ./app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
# `serve` applies migrations and creates the signing key, then runs uvicorn with $WORKERS.
CMD ["sh", "-c", "exec python -m app serve --host 0.0.0.0 --port 8000 --workers \"$WORKERS\""]
