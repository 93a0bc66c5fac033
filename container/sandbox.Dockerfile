# The sandbox image: opencode (pinned, from npm) in a Debian dev environment with Go, Rust,
# C/C++, Node.js, Python 3 and the usual tools. Build it from the repository root:
#   docker build -f container/sandbox.Dockerfile -t agentserver-agent:latest container/
# BASE is a build argument so `nox -s image` can build on a Debian base made locally with
# debootstrap when no registry is reachable.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ARG OPENCODE_VERSION=1.18.33
# Use the model list bundled in the binary: sandboxes reach the LLM only through the proxy.
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    OPENCODE_DISABLE_MODELS_FETCH=1 \
    OPENCODE_DISABLE_AUTOUPDATE=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates curl wget git openssh-client ripgrep fd-find jq less procps psmisc \
      unzip zip xz-utils bzip2 file tree patch diffutils vim-tiny nano \
      build-essential clang gdb cmake pkg-config \
      golang-go rustc cargo \
      nodejs npm \
      python3 python3-pip python3-venv python3-dev \
 && rm -rf /var/lib/apt/lists/*

# BUILD_CA_CERTS (PEM text, optional): extra CAs for npm behind a TLS-intercepting proxy;
# used for this step only, not kept in the image.
ARG BUILD_CA_CERTS=""
RUN if [ -n "$BUILD_CA_CERTS" ]; then \
      printf '%s\n' "$BUILD_CA_CERTS" > /tmp/build-ca.crt; \
      export NODE_EXTRA_CA_CERTS=/tmp/build-ca.crt; \
    fi \
 && npm install --global --no-fund --no-audit "opencode-ai@${OPENCODE_VERSION}" \
 && npm cache clean --force \
 && rm -f /tmp/build-ca.crt \
 && opencode --version

# uid/gid 1000, so volumes made from this image's /home/agent and /data/disk0 belong to the agent.
RUN groupadd --gid 1000 agent \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/agent --shell /bin/bash agent \
 && mkdir -p /data/disk0 \
 && chown agent:agent /data/disk0

USER agent
WORKDIR /home/agent
ENV HOME=/home/agent \
    PATH=/home/agent/go/bin:/home/agent/.cargo/bin:/home/agent/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# opencode's database with its schema made (a tenth of a first start's CPU): Docker copies
# this home into each new sandbox's home volume. Checkpointed into one file, nothing else kept.
RUN opencode db "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null \
 && rm -rf /home/agent/.local/share/opencode/log /home/agent/.local/share/opencode/repos \
      /home/agent/.local/share/opencode/opencode.db-wal /home/agent/.local/share/opencode/opencode.db-shm
EXPOSE 4096
# agentserver runs it with Docker's init (--init) so signals and zombies are handled.
ENTRYPOINT ["opencode", "serve", "--hostname", "0.0.0.0", "--port", "4096"]
