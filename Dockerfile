FROM python:3.12-slim

# git is how gitopsq reads the config repository.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src

# The controller runs as root so that local process runs execute as gitopsq-run, an unprivileged
# user that cannot read the state (SQLite, the secrets key, other runs' logs) nor the controller's
# processes (SECURITY.md). State lives in /data: root's, 0711, so that gitopsq-run only passes
# through it to its runs' folders. To run the controller itself unprivileged instead, use
# `--user gitopsq` with a /data volume it owns: runs then share its user and are not isolated
# (the daemon says so at start, and /healthz and the dashboard show it).
RUN useradd --create-home --uid 10001 gitopsq \
    && useradd --system --uid 10002 --user-group --home-dir /nonexistent --no-create-home \
               --shell /usr/sbin/nologin gitopsq-run \
    && mkdir -m 0711 /data
ENV GITOPSQ_STATE_DIR=/data
WORKDIR /data

EXPOSE 8765
ENTRYPOINT ["gitopsq", "serve"]
CMD ["--help"]
