# Tally's Python servers: one image, one build target per server.
#   docker build -f docker/tally.Dockerfile --target agent   -t tally-agent .
#   docker build -f docker/tally.Dockerfile --target gateway -t tally-gateway .
#   docker build -f docker/tally.Dockerfile --target api     -t tally-api .
# Build context: the repository root.
FROM python:3.11.7-slim-bookworm AS base
# socat: the loopback forwarders of docker/entrypoint.sh (see docker/README.md, gaps).
RUN apt-get update && apt-get install -y --no-install-recommends socat && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/tally
COPY pyproject.toml README.md ./
COPY tally ./tally
COPY schemas ./schemas
COPY sinks ./sinks
COPY jobs ./jobs
COPY reconcile ./reconcile
COPY docker/init.py ./docker/init.py
# Editable install: tally.config.REPO_ROOT stays /opt/tally (schemas/, jobs/ resolved from it).
RUN pip install --no-cache-dir -e . && useradd --system --home-dir /var/lib/tally --create-home tally
COPY docker/entrypoint.sh /usr/local/bin/tally-entrypoint
# TALLY_HOST=0.0.0.0: servers listen on every interface; clients connect to 0.0.0.0:<port>,
# which Linux routes to loopback, where the entrypoint's forwarders reach the real services.
ENV TALLY_HOME=/var/lib/tally TALLY_HOST=0.0.0.0 PYTHONUNBUFFERED=1
USER tally
ENTRYPOINT ["/usr/local/bin/tally-entrypoint"]

FROM base AS agent
EXPOSE 8125/udp 8125/tcp 8126/tcp
CMD ["tally", "agent", "--workers", "2"]

FROM base AS gateway
EXPOSE 9201/tcp
CMD ["tally", "gateway", "--listen", "0.0.0.0"]

FROM base AS api
EXPOSE 9200/tcp
CMD ["tally", "api"]
