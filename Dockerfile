# The tracking-number service in a container. Usage and the rules that keep numbers unique
# (one container per state volume, never two): docs/operations.md, "Docker".
#
#   docker build -t tracking-numbers .
#   docker run -d --name tracking -p 8000:8000 -v tracking-state:/var/lib/tracking \
#       --stop-timeout 30 tracking-numbers
#
# Linted by hadolint in CI (.ci/ops-lint.sh), and built and run by podman (.ci/podman.sh, which
# supplies a stand-in base image under the name in FROM).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed numeric id, so volume ownership is the same across rebuilds and hosts.
RUN groupadd --system --gid 10001 tracking \
    && useradd --system --uid 10001 --gid tracking --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tracking \
    && install -d -o tracking -g tracking -m 0700 /var/lib/tracking

# Fonts for the names on shipping labels (labels/text.py): Noto covers nearly every script,
# CJK included, DejaVu is the fallback; without them a name in another script prints as boxes.
# About 140 MB. Debian's current versions, not pinned: a font update changes no behaviour.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-noto-core fonts-noto-cjk fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/tracking
# .dockerignore lets in only the application and its pyproject.toml (no tests, no .venv).
COPY . .
# The runtime dependencies only: no [test] or [dev] extras.
RUN pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info \
    && python -m compileall -q /opt/tracking

# The state directory holds the SQLite store (the counter and the key) and, by default, the
# allocator socket (STATE_DIR/run). Its loss or rollback can reissue numbers: keep it on a volume.
ENV TRACKING_STATE_DIR=/var/lib/tracking \
    TRACKING_HOST=0.0.0.0 \
    TRACKING_PORT=8000
VOLUME ["/var/lib/tracking"]
EXPOSE 8000

USER 10001:10001

# The stdlib only (the slim image has no curl): urlopen raises on a refused connection and on
# any non-2xx status, and an uncaught exception exits 1, "unhealthy".
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TRACKING_PORT', '8000') + '/health', timeout=3)"]

# run.py, the supervisor, is PID 1: it handles SIGTERM itself (workers drain, the allocator
# checkpoints) and reaps its own children. Give it --stop-timeout 30 (Docker's default is 10 s).
STOPSIGNAL SIGTERM
CMD ["python", "run.py"]
