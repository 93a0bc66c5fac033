# The agentserver image (what the Helm chart runs). Build it from the repository root:
#   docker build -f container/server.Dockerfile -t agentserver:latest .
# PYTHON is the base: any Debian bookworm with or without Python (`nox -s image` builds it on a
# debootstrapped base, where Debian's python3 is installed first).
ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
RUN command -v python3 >/dev/null \
 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*)
# BUILD_CA_CERTS (PEM text, optional): extra CAs for PyPI behind a TLS-intercepting proxy; used
# in this stage only, never in the image.
ARG BUILD_CA_CERTS=""
RUN cat /etc/ssl/certs/ca-certificates.crt > /tmp/build-ca.pem \
 && printf '%s\n' "$BUILD_CA_CERTS" >> /tmp/build-ca.pem
ENV PIP_CERT=/tmp/build-ca.pem SSL_CERT_FILE=/tmp/build-ca.pem
RUN python3 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir --quiet uv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
COPY sql ./sql
COPY web ./web
# The locked dependency versions as wheels, and our wheel (with sql/ and web/ inside): the
# image's stage then installs from them alone, without the network.
RUN /opt/build/bin/uv export --frozen --no-dev --no-hashes --no-emit-project -o /wheels/requirements.txt \
 && /opt/build/bin/pip wheel --no-cache-dir --quiet -r /wheels/requirements.txt -w /wheels \
 && /opt/build/bin/uv build --wheel --out-dir /wheels

FROM ${PYTHON}
RUN command -v python3 >/dev/null \
 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*)
COPY --from=build /wheels /wheels
# A virtualenv of its own: Debian's python3 refuses installs into the system (PEP 668).
RUN python3 -m venv /opt/agentserver \
 && /opt/agentserver/bin/pip install --no-cache-dir --quiet --no-index --find-links /wheels \
      -r /wheels/requirements.txt /wheels/agentserver-*.whl \
 && rm -rf /wheels \
 && groupadd --gid 10001 agentserver \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/agentserver --no-create-home --shell /usr/sbin/nologin agentserver \
 && mkdir -p /var/lib/agentserver \
 && chown 10001:10001 /var/lib/agentserver
ENV PATH=/opt/agentserver/bin:$PATH \
    AGENTSERVER_DATA_DIR=/var/lib/agentserver \
    AGENTSERVER_LISTEN=0.0.0.0:8080 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Not root: the Helm chart runs it as 10001 with a read-only root filesystem. With the Docker
# backend the server needs the host's Docker socket, whose group varies: docker-compose.yml
# runs it as root for that (the socket is root-equivalent anyway).
USER 10001:10001
VOLUME /var/lib/agentserver
EXPOSE 8080
ENTRYPOINT ["agentserver"]
CMD ["serve"]
