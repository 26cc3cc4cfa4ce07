# syntax=docker/dockerfile:1
# One image for every worker_bridge process: migrations, workers, the dispatcher
# (celery beat) and Flower. docker-compose.yml picks the command per service.
#
# No secret is baked in: the database URL, the broker URL and Flower's credentials
# come from the environment at run time (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the project from its own files, exactly what pyproject.toml packages:
# worker_bridge, the jobs package and the top-level module celeryconfig (README.md
# is the project's readme, which setuptools reads). Copying these paths only, not
# the whole context, keeps tests, .git and any local .env out of the image.
WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py ./
COPY worker_bridge ./worker_bridge
COPY jobs ./jobs
# Flower is not a dependency of the library; the image carries it so that
# `celery -A worker_bridge flower` works. The source tree is removed once installed:
# everything runs from site-packages.
RUN pip install . "flower>=2.0,<3" \
    && rm -rf /src

# Run as an unprivileged user (Celery also warns when a worker runs as root).
RUN useradd --create-home --home-dir /app --uid 10001 --user-group app
WORKDIR /app
USER app

CMD ["celery", "-A", "worker_bridge", "worker", "--loglevel", "INFO"]
