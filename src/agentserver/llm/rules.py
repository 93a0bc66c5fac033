"""What the LLM proxy checks and rewrites in a sandbox's request, decided without I/O (pure)."""

from __future__ import annotations

import fnmatch
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from agentserver.http_headers import HOP_BY_HOP
from agentserver.settings import Settings

PREFIX = "/proxy/anthropic"
ACTIVE = frozenset({"creating", "running"})
ANTHROPIC_VERSION = b"2023-06-01"
# Never forwarded upstream: the sandbox's credential, our cookies, and what httpx sets itself.
_DROPPED = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"x-api-key",
    b"authorization",
    b"cookie",
    b"accept-encoding",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}
_SANDBOX_HOST = re.compile(r"^(oc|claw)-[a-z0-9]+\.")
# The input of a call is estimated at one token per this many body bytes when it is reserved.
BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Route:
    """One Anthropic endpoint that opencode or OpenClaw calls, and what its body means to us."""

    method: str
    path: re.Pattern[str]
    names_model: bool  # the JSON body carries `model`, so the allow-list applies to it
    spends_tokens: bool  # the call is billed in tokens, so it reserves quota at admission


# Everything else (Message Batches, Files, Skills, Admin API …) is refused with 404: the real key
# would let any sandbox read other workspaces' files and batches, and batches escape the quota.
ROUTES = (
    Route("POST", re.compile(r"/v1/messages"), names_model=True, spends_tokens=True),
    Route("POST", re.compile(r"/v1/messages/count_tokens"), names_model=True, spends_tokens=False),
    Route("GET", re.compile(r"/v1/models"), names_model=False, spends_tokens=False),
    Route(
        "GET",
        re.compile(r"/v1/models/[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}"),
        names_model=False,
        spends_tokens=False,
    ),
)


class Refusal(Exception):
    """A call we answer ourselves, in Anthropic's error shape so SDK clients show the message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retry_after: int | None = None,
        reason: str = "bad_request",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.reason = reason  # a short code, logged and shown on the Usage page
        # Who was refused and for which model, when known by the time of the refusal.
        self.caller: Caller | None = None
        self.model: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """The sandbox a proxy token belongs to, and its workspace's limit overrides."""

    sandbox_id: str
    workspace_id: str
    created_by: str | None
    name: str
    status: str
    rpm_override: int | None = None
    tokens_per_day_override: int | None = None

    def limits(self, settings: Settings) -> tuple[int, int]:
        """Requests per minute and tokens per day that apply (0 = unlimited)."""
        rpm = settings.llm_rpm if self.rpm_override is None else self.rpm_override
        per_day = self.tokens_per_day_override
        return rpm, settings.llm_tokens_per_day if per_day is None else per_day


@dataclass(frozen=True, slots=True)
class Requested:
    """What the proxy reads from a request body: the model and the most output it may cost."""

    model: str | None = None
    max_tokens: int | None = None


class UnknownTokens:
    """Token hashes recently found to belong to no sandbox, so a client repeating one costs no
    database query. Bounded (the oldest entry goes first) and short-lived; only negative answers
    are kept, so a revoked token is never let through by it."""

    def __init__(self, ttl: float = 10.0, size: int = 4096) -> None:
        self.ttl = ttl
        self.size = size
        self._expires: dict[str, float] = {}

    def __contains__(self, token_hash: str) -> bool:
        expires = self._expires.get(token_hash)
        if expires is None:
            return False
        if expires < time.monotonic():
            del self._expires[token_hash]
            return False
        return True

    def add(self, token_hash: str) -> None:
        self._expires.pop(token_hash, None)
        while len(self._expires) >= self.size:
            del self._expires[next(iter(self._expires))]
        self._expires[token_hash] = time.monotonic() + self.ttl

    def __len__(self) -> int:
        return len(self._expires)


def error_body(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "api_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def is_sandbox_host(host: str) -> bool:
    """`oc-{id}.…` and `claw-{id}.…` belong to the subdomain proxy, never to this one."""
    return bool(_SANDBOX_HOST.match(host.lower()))


def proxy_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The sandbox's token from `x-api-key`, else from `Authorization: Bearer`."""
    found = dict(headers)
    if found.get(b"x-api-key"):
        return found[b"x-api-key"].decode("latin-1").strip()
    scheme, _, value = found.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def upstream_url(settings: Settings, raw_path: bytes, query: bytes) -> str:
    """The base URL (its path kept) + the path after our prefix + the query string."""
    rest = raw_path[len(PREFIX) :].decode("ascii", "replace") or "/"
    if not rest.startswith("/"):
        raise Refusal(404, "no such route", reason="route_not_forwarded")
    if any(part in (".", "..") for part in unquote(rest).split("/")):
        raise Refusal(400, "the path may not contain . or .. segments")
    url = settings.anthropic_base_url.rstrip("/") + rest
    return url + ("?" + query.decode("ascii", "replace") if query else "")


def route_for(method: str, raw_path: bytes) -> Route:
    """The endpoint a call is for; anything opencode and OpenClaw do not use is a 404."""
    rest = raw_path[len(PREFIX) :].decode("ascii", "replace")
    for route in ROUTES:
        if route.method == method and route.path.fullmatch(rest):
            return route
    shown = rest[:100] or "/"
    raise Refusal(
        404,
        f"{method} {shown} is not an endpoint this proxy forwards",
        reason="route_not_forwarded",
    )


def upstream_headers(
    headers: list[tuple[bytes, bytes]], settings: Settings
) -> list[tuple[bytes, bytes]]:
    """The sandbox's headers minus hop-by-hop and its credential, plus the real credential."""
    connection = b",".join(v for k, v in headers if k == b"connection")
    dropped = _DROPPED | {t.strip().lower() for t in connection.split(b",") if t.strip()}
    out = [(k, v) for k, v in headers if k not in dropped]
    if settings.anthropic_api_key:
        out.append((b"x-api-key", settings.anthropic_api_key.encode()))
    if settings.anthropic_auth_token:
        out.append((b"authorization", b"Bearer " + settings.anthropic_auth_token.encode()))
    if not any(k == b"anthropic-version" for k, _ in out):
        out.append((b"anthropic-version", ANTHROPIC_VERSION))
    # Identity, so the usage in the answer can be read as it passes.
    out.append((b"accept-encoding", b"identity"))
    return out


def response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream's headers minus hop-by-hop ones and Content-Length: the answer is re-framed as
    chunked so it ends only after its usage is recorded (a caller's next request sees it)."""
    connection = b",".join(v for k, v in headers if k.lower() == b"connection")
    dropped = HOP_BY_HOP | {b"content-length"}
    dropped |= {t.strip().lower() for t in connection.split(b",") if t.strip()}
    return [(k.lower(), v) for k, v in headers if k.lower() not in dropped]


def request_model(body: bytes, content_type: str) -> str | None:
    """The `model` of a JSON request body; malformed JSON is refused with a clear 400."""
    return read_request(body, content_type).model


def read_request(body: bytes, content_type: str) -> Requested:
    """`model` and `max_tokens` of a JSON body; malformed JSON is refused with a clear 400.

    A body giving either of them twice in one object is refused too: parsers disagree on which
    copy wins, so a repeated `model` or `max_tokens` could pass our checks and mean another
    thing upstream (no JSON encoder writes a key twice, so no real client is turned away).
    """
    if not body or ("json" not in content_type and content_type):
        return Requested()
    try:
        text = body.decode("utf-8")
        if _cannot_repeat(text):
            document = json.loads(text)
        else:
            document = json.loads(text, object_pairs_hook=_pairs)
    except _RepeatedKey as exc:
        raise Refusal(400, f"the request body gives {exc.args[0]!r} more than once") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refusal(400, "the request body is not valid JSON (UTF-8)") from None
    if not isinstance(document, dict):
        return Requested()
    model = document.get("model")
    if not isinstance(model, str):
        model = None
    elif len(model) > 256 or not model.isprintable():
        raise Refusal(400, "model is not a valid model name")
    limit = document.get("max_tokens")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        limit = None
    return Requested(model, limit)


# The keys whose value the proxy decides on; each may appear once per object.
_DECIDING = ("model", "max_tokens")


class _RepeatedKey(ValueError):
    pass


def _cannot_repeat(text: str) -> bool:
    """True when no object in `text` can hold a deciding key twice, seen without parsing.

    Without \\u escapes a key can only be spelt literally, and inside a JSON string every `"` is
    escaped, so `"model"` appears once per key or value equal to it. This keeps the hook's cost
    (about 1 µs per object, several ms for a long conversation) off the usual request.
    """
    return "\\u" not in text and all(text.count(f'"{key}"') <= 1 for key in _DECIDING)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        keys = [key for key, _ in pairs]
        for key in _DECIDING:
            if keys.count(key) > 1:
                raise _RepeatedKey(key)
    return document


def check_model(settings: Settings, model: str | None, *, required: bool = False) -> None:
    """The allow-list: a listed model passes; with `required`, so must a body naming none."""
    allowed = settings.llm_models
    if not allowed:
        return
    if model is None:
        if required:
            raise Refusal(
                400,
                "this server allows only some models: name one in a JSON body",
                reason="model_not_allowed",
            )
        return
    if not any(fnmatch.fnmatchcase(model, p) for p in allowed):
        raise Refusal(
            403, f"model {model!r} is not allowed on this server", reason="model_not_allowed"
        )


def check_caller(caller: Caller | None) -> Caller:
    if caller is None:
        raise Refusal(401, "invalid api key", reason="unknown_token")
    if caller.status not in ACTIVE:
        refusal = Refusal(
            403, f"sandbox is not active (it is {caller.status})", reason="sandbox_inactive"
        )
        refusal.caller = caller
        raise refusal
    return caller


def input_estimate(body_size: int) -> int:
    """The input tokens a body of this size is taken to cost before Anthropic counts them."""
    return -(-body_size // BYTES_PER_TOKEN)


def reservation(route: Route, requested: Requested, body_size: int, per_day: int) -> int:
    """The tokens a call holds of the daily quota from admission until its real usage is known.

    Its input estimate plus the most output it may ask for, capped at the whole quota (a larger
    hold would block no more). Refused when a quota applies and the output cannot be bounded.
    """
    if not per_day or not route.spends_tokens:
        return 0
    if requested.max_tokens is None:
        raise Refusal(400, "max_tokens must be a positive integer")
    return min(per_day, input_estimate(body_size) + requested.max_tokens)


def check_limits(rpm: int, per_day: int, load: dict[str, Any], incoming: int = 0) -> None:
    """Refuse with 429 when the workspace is over its per-minute or per-day limit.

    `tokens_today` counts what finished calls used and what calls in flight reserved; a call
    whose `incoming` input does not fit in what is left is refused too, so the day's total can
    pass the quota only by the output of the last call let in.
    """
    if rpm and load["recent_requests"] >= rpm:
        raise Refusal(
            429,
            f"this workspace may make {rpm} LLM requests per minute",
            retry_after=max(1, load["window_frees_in"]),
            reason="rate_limited",
        )
    used = load["tokens_today"]
    if not per_day or (used + incoming <= per_day and used < per_day):
        return
    if used >= per_day:
        message = f"this workspace used its {per_day} LLM tokens for today (UTC)"
    else:
        message = (
            f"this call's input (about {incoming} tokens) does not fit in the"
            f" {per_day - used} LLM tokens this workspace has left today (UTC)"
        )
    raise Refusal(429, message, retry_after=max(1, load["day_ends_in"]), reason="quota_reached")
