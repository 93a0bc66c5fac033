"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import trio
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, current_app, jsonify, request

from agentserver.api.common import deps
from agentserver.api.metrics import metrics_allowed
from agentserver.errors import Unauthenticated

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
async def healthz() -> Response:
    """The process is alive."""
    await trio.lowlevel.checkpoint()
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
async def readyz() -> Response:
    """The database answers and this replica is not draining (serve.py); 503 otherwise, so
    the load balancer sends new work to the other replicas (`/healthz` stays 200 meanwhile)."""
    d = deps()
    ok = await d.db.ping()
    draining = d.cluster.presence.draining
    status = "draining" if draining else "ok" if ok else "unavailable"
    response = jsonify({"status": status, "database": ok})
    response.status_code = 200 if ok and not draining else 503
    return response


@blueprint.get("/metrics")
async def metrics() -> Response:
    """Prometheus text exposition (with --metrics-token set, for its bearer only)."""
    await trio.lowlevel.checkpoint()
    if not metrics_allowed(deps().settings.metrics_token, request.headers.get("Authorization")):
        raise Unauthenticated("send the metrics token as `Authorization: Bearer <token>`")
    registry = current_app.config["METRICS"].registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
