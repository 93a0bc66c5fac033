"""The Quart application: blueprints, error shapes, request logs, metrics, origin checks."""

from __future__ import annotations

import logging
import re
import time
import uuid
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError
from quart import Response, current_app, g, request
from quart_schema import QuartSchema, RequestSchemaValidationError
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from agentserver import __version__
from agentserver.api.common import error_response
from agentserver.api.metrics import method_label, status_label
from agentserver.api.openapi import DescribedOpenAPI
from agentserver.auth.sessions import session_cookie_name
from agentserver.deps import Deps
from agentserver.errors import AgentServerError, Forbidden, RateLimited
from agentserver.log_format import REQUEST_ID

log = logging.getLogger("agentserver.http")
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _field_of(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__") or "body"
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    return field, f"{field}: {message}"


class Metrics:
    """Request counts and latency per route and status (Prometheus)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "agentserver_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "agentserver_http_request_seconds",
            "Time to answer (headers)",
            ["route", "method", "status"],
            registry=self.registry,
        )
        # 1 on the replica that runs the cluster's once-only work (cluster/leader.py).
        self.leader = Gauge(
            "agentserver_cluster_leader",
            "1 when this replica leads the cluster's background work (idle pauses, reconciliation)",
            registry=self.registry,
        )


def create_app(deps: Deps) -> QuartTrio:
    app = QuartTrio("agentserver", static_folder=None)
    app.config["DEPS"] = deps
    app.config["MAX_CONTENT_LENGTH"] = deps.settings.max_body
    app.config["BODY_TIMEOUT"] = 60
    app.config["RESPONSE_TIMEOUT"] = None  # event streams live as long as the client wants
    QuartSchema(
        app,
        info={"title": "agentserver", "version": __version__},
        openapi_path="/openapi.json",
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        openapi_provider_class=DescribedOpenAPI,
    )
    metrics = Metrics()
    metrics.leader.set_function(lambda: float(deps.cluster.leader.leading))
    app.config["METRICS"] = metrics

    from agentserver.api import (
        admin,
        agents,
        audit,
        auth,
        downloads,
        health,
        members,
        oidc,
        previews,
        sandbox_open,
        sandboxes,
        tokens,
        usage,
        web,
        workspaces,
    )

    routes = (
        health,
        auth,
        workspaces,
        members,
        admin,
        oidc,
        usage,
        sandbox_open,
        sandboxes,
        previews,
        audit,
    )
    for module in (
        *routes,
        tokens,
        agents,
        downloads,
        web,
    ):  # web last: its catch-all serves client-side routes
        app.register_blueprint(module.blueprint)

    @app.before_request
    async def start_request() -> Response | None:
        given = request.headers.get("X-Request-Id", "")
        # A caller's id is kept for tracing only if it is a plain token (it goes into the log).
        g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        REQUEST_ID.set(g.request_id)  # every record this request logs carries it
        g.started = time.perf_counter()
        if (
            request.method in _UNSAFE
            and session_cookie_name(deps.settings.secure_cookies) in request.cookies
            and not _same_origin()
        ):
            raise Forbidden("cross-origin request refused")
        return None

    @app.after_request
    async def finish_request(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        # Fixed label sets: a client cannot mint new time series (api/metrics.py).
        labels = (route, method_label(request.method), status_label(response.status_code))
        metrics.requests.labels(*labels).inc()
        metrics.latency.labels(*labels).observe(elapsed)
        response.headers["X-Request-Id"] = g.get("request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        # The query string can carry one-time tickets or codes: log the path only.
        log.info(
            "%s %s %s %d %.1fms",
            g.get("request_id", "-"),
            request.method,
            request.path,
            response.status_code,
            elapsed * 1000,
            extra={
                "fields": {
                    "method": request.method,
                    "path": request.path,
                    "route": route,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 2),
                }
            },
        )
        return response

    @app.errorhandler(AgentServerError)
    async def on_ours(exc: AgentServerError) -> Response:
        extra = {"field": exc.field} if exc.field else {}
        response = error_response(exc.status, exc.code, exc.message, **extra)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(RequestSchemaValidationError)
    async def on_invalid(exc: RequestSchemaValidationError) -> Response:
        inner = exc.validation_error
        if isinstance(inner, ValidationError):
            field, message = _field_of(inner)
            return error_response(400, "invalid", message, field=field)
        return error_response(400, "invalid", "the body is not valid JSON of the expected shape")

    @app.errorhandler(UnicodeDecodeError)
    async def on_bad_text(exc: UnicodeDecodeError) -> Response:
        # Quart decodes a JSON body before parsing it; bytes that are not UTF-8 are bad input.
        return error_response(400, "invalid", "the body is not valid UTF-8")

    @app.errorhandler(RecursionError)
    async def on_deep_json(exc: RecursionError) -> Response:
        # json.loads recurses per nesting level; a body nested thousands deep is bad input.
        return error_response(400, "invalid", "the body is nested too deeply")

    @app.errorhandler(HTTPException)
    async def on_http(exc: HTTPException) -> Response:
        status = exc.code or 500
        codes = {
            400: "invalid",
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
            415: "unsupported_media_type",
        }
        message = {
            413: f"the body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes",
            404: "no such route",
            405: "method not allowed on this route",
        }.get(status, exc.description or exc.name)
        response = error_response(status, codes.get(status, "http_error"), message)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return response

    @app.errorhandler(Exception)
    async def on_bug(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path, exc_info=exc)
        return error_response(500, "internal", "internal error; the server log has details")

    return app


def _same_origin() -> bool:
    """A cookie-carrying mutation must come from a page of this same host (CSRF defence)."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin:
        return True  # not a browser: browsers always send Origin on cross-origin mutations
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == (request.host or "").lower()
