# The agentserver image. Build it from the repository root:
#   docker build -f container/server.Dockerfile -t agentserver:latest .
# PYTHON is a build argument so another Python 3.11 Debian base can stand in.
ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
RUN pip install --no-cache-dir uv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
COPY sql ./sql
COPY web ./web
# The locked dependency versions, then our wheel (with sql/ and web/ inside).
RUN uv export --frozen --no-dev --no-hashes --no-emit-project -o /wheels/requirements.txt \
 && uv build --wheel --out-dir /wheels

FROM ${PYTHON}
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir -r /wheels/requirements.txt /wheels/agentserver-*.whl \
 && rm -rf /wheels
# Root inside the container: the server talks to the Docker socket mounted from the host
# (whose group id varies), which is root-equivalent anyway.
ENV AGENTSERVER_DATA_DIR=/var/lib/agentserver \
    PYTHONUNBUFFERED=1
VOLUME /var/lib/agentserver
EXPOSE 8080
ENTRYPOINT ["agentserver", "serve", "--listen", "0.0.0.0:8080"]
