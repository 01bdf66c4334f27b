# One image for every Decouple Lab process: the API, `decouple migrate`, the Ray head and the
# workers. Ray requires the same Ray and Python versions on every node of a cluster, and the
# trainables import this project's code on whichever node they land, so head and workers must
# run the very same image.
#
# TORCH_VARIANT picks the PyTorch wheel index: `cu128` (the default, for NVIDIA GPU workers; the
# CUDA wheel also runs on CPU, so the API and the head use it too) or `cpu` (a much smaller
# image, for machines without GPUs; see docker-compose.cpu.yml).
#
#   docker build -t decouple-lab:cu128 .
#   docker build --build-arg TORCH_VARIANT=cpu -t decouple-lab:cpu .
#
# Offline, or behind a registry mirror: BASE_IMAGE replaces python:3.11-slim (any Debian-like image
# whose `python` is CPython 3.11 with pip, e.g. the debootstrap one scripts/compose-e2e makes), and
# TORCH_INDEX_URL / TORCH_FIND_LINKS replace the PyTorch wheel index, e.g. a folder of wheels
# served on loopback during a `--network host` build:
#
#   docker build --network host --build-arg BASE_IMAGE=decouple-lab-base:bookworm \
#     --build-arg TORCH_VARIANT=cpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
#     --build-arg TORCH_FIND_LINKS=http://127.0.0.1:8899/ -t decouple-lab:cpu .
#
# No `# syntax=` line and no BuildKit-only instruction: the classic builder (DOCKER_BUILDKIT=0)
# builds it as well, without pulling a frontend image from a registry.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VARIANT=cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG TORCH_FIND_LINKS=
# The versions the test suite runs (tests/test_compose.py checks them against .venv).
ARG TORCH_VERSION=2.13.0
ARG RAY_VERSION=2.60.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    DECOUPLE_DATA_DIR=/data \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /app

# The heavy, rarely changing layers first: torch from its own index, then the pinned Ray and the
# rest of the dependencies read from pyproject.toml, so editing the code does not reinstall them.
# ray[default] brings the dashboard and its agents, which the head and every node run.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"}
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install "ray[default,tune]==${RAY_VERSION}" -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md alembic.ini ./
COPY service ./service
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-deps . \
    && python -c "import torch, ray, service.cli; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

# Plugins (docs/plugins.md): pip requirements installed into the image, e.g.
#   docker build --build-arg PLUGINS="my-task==1.0.0 my-rule==2.1.0" -t decouple-lab:cu128 .
# The build fails if the registry refuses one of them (a broken description, a name taken).
ARG PLUGINS=
RUN if [ -n "$PLUGINS" ]; then \
        pip install $PLUGINS \
        && python -c "from service.domain.plugins import registry; r = registry(); assert not r.refused, r.refused; print('plugins:', sorted(r.plugins()))"; \
    fi

# The scripts keep their mode from the checkout (executable; tests/test_compose.py checks it).
COPY docker/worker-entrypoint.sh /usr/local/bin/decouple-worker-entrypoint
COPY docker/entrypoint.sh /usr/local/bin/decouple-entrypoint
COPY docker/secrets.sh /usr/local/bin/decouple-secrets

# Not root: the data volume, the secrets volume and Ray's temp dir belong to this user. A named
# volume starts as a copy of the image's folder it is mounted on, owner and mode included, so
# /data and /run/decouple-secrets are made here, owned by that user, before the first `up`.
RUN useradd --create-home --uid 1000 decouple \
    && mkdir -p /data /run/decouple-secrets \
    && chown decouple:decouple /data /run/decouple-secrets \
    && chmod 0755 /run/decouple-secrets
USER decouple
# The numba kernels of the packed engines (workers/cpu_kernels.py) compiled once, as this user,
# into its cache folder: containers start with the machine code instead of compiling it.
ENV NUMBA_CACHE_DIR=/home/decouple/.cache/numba
RUN python -c "import workers.cpu_kernels"

# Reads the deployment's secrets from files (POSTGRES_PASSWORD_FILE) before any command.
ENTRYPOINT ["decouple-entrypoint"]

EXPOSE 8000
CMD ["decouple", "serve", "--host", "0.0.0.0", "--port", "8000"]
