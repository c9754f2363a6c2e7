FROM python:3.12-slim

# git is how gitopsq reads the config repository.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src

# State (SQLite, clones, node logs) lives in /data; run as an unprivileged user.
RUN useradd --create-home --uid 10001 gitopsq && mkdir /data && chown gitopsq /data
USER gitopsq
ENV GITOPSQ_STATE_DIR=/data
WORKDIR /data

EXPOSE 8765
ENTRYPOINT ["gitopsq", "serve"]
CMD ["--help"]
