"""The LLM proxy's request rewriting and admission rules (pure; table tests)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentserver.llm.callers import CallerCache
from agentserver.llm.rules import (
    ROUTES,
    Caller,
    Refusal,
    Requested,
    Route,
    UnknownTokens,
    check_limits,
    check_model,
    error_body,
    input_estimate,
    is_sandbox_host,
    proxy_token,
    read_request,
    request_model,
    reservation,
    response_headers,
    route_for,
    upstream_headers,
    upstream_url,
)
from agentserver.settings import Settings, build_settings


def settings(**values: str) -> Settings:
    return build_settings({"listen": "127.0.0.1:0", **values}, {})


@pytest.mark.parametrize(
    ("base", "raw_path", "query", "want"),
    [
        (
            "https://api.anthropic.com",
            b"/proxy/anthropic/v1/messages",
            b"",
            "https://api.anthropic.com/v1/messages",
        ),
        (
            "https://gw.example.com/anthropic",
            b"/proxy/anthropic/v1/messages",
            b"beta=true",
            "https://gw.example.com/anthropic/v1/messages?beta=true",
        ),
        ("https://gw.example.com/a/", b"/proxy/anthropic", b"", "https://gw.example.com/a/"),
        (
            "http://h",
            b"/proxy/anthropic/v1/files/f%2Fx",
            b"a=1&b=%20",
            "http://h/v1/files/f%2Fx?a=1&b=%20",
        ),
    ],
)
def test_upstream_url_keeps_base_path_and_query(
    base: str, raw_path: bytes, query: bytes, want: str
) -> None:
    """The base URL's path is kept, our prefix removed, percent-encoding and query untouched."""
    assert upstream_url(settings(anthropic_base_url=base), raw_path, query) == want


@pytest.mark.parametrize(
    "raw_path",
    [b"/proxy/anthropic/v1/../admin", b"/proxy/anthropic/%2e%2e/x", b"/proxy/anthropic/./v1"],
)
def test_dot_segments_are_refused(raw_path: bytes) -> None:
    """Paths that could climb out of the base URL's path are refused with 400."""
    with pytest.raises(Refusal) as caught:
        upstream_url(settings(anthropic_base_url="https://gw/anthropic"), raw_path, b"")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        ([(b"x-api-key", b"tok")], "tok"),
        ([(b"authorization", b"Bearer tok")], "tok"),
        ([(b"authorization", b"bearer  tok ")], "tok"),
        ([(b"x-api-key", b"a"), (b"authorization", b"Bearer b")], "a"),
        ([(b"authorization", b"Basic tok")], None),
        ([(b"x-api-key", b"")], None),
        ([], None),
    ],
)
def test_proxy_token_sources(headers: list[tuple[bytes, bytes]], want: str | None) -> None:
    """The token comes from x-api-key, else a Bearer Authorization; nothing else counts."""
    assert proxy_token(headers) == want


def test_upstream_headers_swap_the_credential_and_drop_hop_by_hop() -> None:
    """The sandbox's credential, cookies and hop-by-hop headers go; the real key is added."""
    sent = [
        (b"x-api-key", b"proxy-token"),
        (b"authorization", b"Bearer proxy-token"),
        (b"connection", b"keep-alive, x-private"),
        (b"x-private", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"cookie", b"a=b"),
        (b"host", b"127.0.0.1:8080"),
        (b"content-length", b"10"),
        (b"accept-encoding", b"gzip"),
        (b"anthropic-beta", b"tools-2024"),
        (b"user-agent", b"opencode"),
    ]
    out = upstream_headers(sent, settings(anthropic_api_key="real"))
    assert out == [
        (b"anthropic-beta", b"tools-2024"),
        (b"user-agent", b"opencode"),
        (b"x-api-key", b"real"),
        (b"anthropic-version", b"2023-06-01"),
        (b"accept-encoding", b"identity"),
    ]
    both = dict(
        upstream_headers(
            [(b"anthropic-version", b"x")],
            settings(anthropic_api_key="k", anthropic_auth_token="t"),
        )
    )
    assert both == {
        b"anthropic-version": b"x",
        b"x-api-key": b"k",
        b"authorization": b"Bearer t",
        b"accept-encoding": b"identity",
    }


def test_response_headers_are_reframed() -> None:
    """Hop-by-hop headers and Content-Length are dropped from the answer; the rest stays."""
    got = response_headers(
        [
            (b"Content-Type", b"text/event-stream"),
            (b"Content-Length", b"5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"request-id", b"r1"),
        ]
    )
    assert got == [(b"content-type", b"text/event-stream"), (b"request-id", b"r1")]


@pytest.mark.parametrize(
    ("host", "ours"),
    [
        ("oc-abc123.localhost:8080", True),
        ("claw-x9.example.com", True),
        ("OC-ABC.example.com", True),
        ("localhost:8080", False),
        ("oc-.example.com", False),
        ("app.oc-abc.example.com", False),
        ("", False),
    ],
)
def test_sandbox_hosts(host: str, ours: bool) -> None:
    """Only oc-{id}./claw-{id}. hosts are left to the subdomain proxy."""
    assert is_sandbox_host(host) is ours


def test_request_model_and_allow_list() -> None:
    """The model is read from JSON bodies; bad JSON is a 400; the allow-list takes patterns."""
    assert request_model(b'{"model": "m"}', "application/json") == "m"
    assert request_model(b'{"model": 3}', "") is None
    assert request_model(b"--x\r\n", "multipart/form-data; boundary=x") is None
    with pytest.raises(Refusal) as caught:
        request_model(b"[1,", "application/json")
    assert caught.value.status == 400
    for odd in (b'{"model": "a\\u0000b"}', b'{"model": "' + b"m" * 300 + b'"}'):
        with pytest.raises(Refusal):
            request_model(odd, "application/json")
    allowing = settings(llm_models="claude-haiku-*,claude-sonnet-4-5")
    check_model(allowing, "claude-haiku-4-5")
    check_model(allowing, None)
    with pytest.raises(Refusal) as refused:
        check_model(allowing, "claude-sonnet-4-50")
    assert refused.value.status == 403


LOAD = {"recent_requests": 5, "window_frees_in": 12, "tokens_today": 900, "day_ends_in": 3600}


@pytest.mark.parametrize(
    ("rpm", "per_day", "retry_after"),
    [(5, 0, 12), (0, 900, 3600), (4, 10_000, 12), (6, 901, None), (0, 0, None)],
)
def test_limits(rpm: int, per_day: int, retry_after: int | None) -> None:
    """At or over a limit → 429 with the right Retry-After; 0 means unlimited."""
    if retry_after is None:
        check_limits(rpm, per_day, LOAD)
        return
    with pytest.raises(Refusal) as caught:
        check_limits(rpm, per_day, LOAD)
    assert (caught.value.status, caught.value.retry_after) == (429, retry_after)


def test_overrides_win_over_server_defaults() -> None:
    """A workspace override (even 0 = unlimited) replaces the server default; None keeps it."""
    server = settings(llm_rpm="10", llm_tokens_per_day="1000")
    base = Caller("s", "w", None, "n", "running")
    assert base.limits(server) == (10, 1000)
    assert Caller("s", "w", None, "n", "running", 0, 5).limits(server) == (0, 5)


def test_caller_cache_expires_and_forgets() -> None:
    """Entries expire after their TTL, can be forgotten, and the cache stays bounded."""
    cache = CallerCache(ttl=-1)
    caller = Caller("s", "w", None, "n", "running")
    cache.put("h", caller)
    assert cache.get("h") is None
    cache = CallerCache(size=2)
    for key in ("a", "b", "c"):
        cache.put(key, caller)
    assert cache.get("c") is caller
    assert len(cache._entries) <= 2
    cache.forget("c")
    assert cache.get("c") is None


def test_error_body_shape() -> None:
    """Errors use Anthropic's shape with the type its SDKs expect for each status."""
    assert error_body(413, "too big") == (
        b'{"type": "error", "error": {"type": "request_too_large", "message": "too big"}}'
    )
    assert b'"api_error"' in error_body(502, "x")


@pytest.mark.parametrize(
    ("method", "path", "names_model", "spends_tokens"),
    [
        ("POST", "/v1/messages", True, True),
        ("POST", "/v1/messages/count_tokens", True, False),
        ("GET", "/v1/models", False, False),
        ("GET", "/v1/models/claude-sonnet-4-5-20250929", False, False),
    ],
)
def test_agent_routes_are_known(
    method: str, path: str, names_model: bool, spends_tokens: bool
) -> None:
    """The endpoints opencode and OpenClaw call are found, with what their bodies mean."""
    route = route_for(method, b"/proxy/anthropic" + path.encode())
    assert (route.names_model, route.spends_tokens) == (names_model, spends_tokens)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/messages/batches"),
        ("GET", "/v1/messages/batches"),
        ("GET", "/v1/messages/batches/msgbatch_1/results"),
        ("POST", "/v1/messages/batches/msgbatch_1/cancel"),
        ("GET", "/v1/files"),
        ("POST", "/v1/files"),
        ("GET", "/v1/files/file_1/content"),
        ("DELETE", "/v1/files/file_1"),
        ("GET", "/v1/skills"),
        ("GET", "/v1/organizations/api_keys"),
        ("POST", "/v1/complete"),
        ("GET", "/v1/messages"),
        ("PUT", "/v1/messages"),
        ("POST", "/v1/models"),
        ("HEAD", "/v1/models"),
        ("POST", "/v1/messages/"),
        ("POST", "/v1//messages"),
        ("POST", "/v1/messages%2Fbatches"),
        ("POST", "/v1/messages;x"),
        ("GET", "/v1/models/a/b"),
        ("GET", "/v1/models/%2e%2e"),
        ("GET", "/v1/models/.."),
        ("GET", "/v1/models/.hidden"),
        ("GET", "/v1/models/"),
        ("POST", "/messages"),
        ("POST", ""),
    ],
)
def test_other_endpoints_are_404(method: str, path: str) -> None:
    """Batches, Files, admin routes, other methods and near-misses of a route are all 404."""
    with pytest.raises(Refusal) as caught:
        route_for(method, b"/proxy/anthropic" + path.encode())
    assert caught.value.status == 404
    assert b"not_found_error" in error_body(caught.value.status, caught.value.message)


def test_every_route_is_reachable() -> None:
    """No route in the table is shadowed by another (each is what its own path finds)."""
    samples = {"/v1/models/[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}": "/v1/models/m"}
    for route in ROUTES:
        path = samples.get(route.path.pattern, route.path.pattern)
        assert route_for(route.method, b"/proxy/anthropic" + path.encode()) is route


@pytest.mark.parametrize(
    ("body", "want"),
    [
        (b'{"model": "m", "max_tokens": 64}', Requested("m", 64)),
        (b'{"model": "m"}', Requested("m", None)),
        (b'{"model": "m", "max_tokens": true}', Requested("m", None)),
        (b'{"model": "m", "max_tokens": 0}', Requested("m", None)),
        (b'{"model": "m", "max_tokens": 64.0}', Requested("m", None)),
        (b'{"model": "m", "max_tokens": "64"}', Requested("m", None)),
        (b'{"model": 1, "max_tokens": 8}', Requested(None, 8)),
        (b"[]", Requested()),
        (b'{"a": {"b": 1}, "c": {"b": 2}}', Requested()),
    ],
)
def test_read_request(body: bytes, want: Requested) -> None:
    """`model` and `max_tokens` are read only when they have the type Anthropic requires."""
    assert read_request(body, "application/json") == want


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "claude-haiku-4-5", "model": "claude-opus-4-1"}',
        b'{"max_tokens": 1, "max_tokens": 100000, "model": "m"}',
        b'{"model": "claude-opus-4-1", "mod\\u0065l": "claude-haiku-4-5"}',
        b'{"model": "m", "tools": [{"model": "a", "model": "b"}]}',
    ],
)
def test_repeated_deciding_keys_are_refused(body: bytes) -> None:
    """`model` or `max_tokens` given twice in one object (even spelt with escapes) is a 400."""
    with pytest.raises(Refusal) as caught:
        read_request(body, "application/json")
    assert caught.value.status == 400
    assert "more than once" in caught.value.message


@pytest.mark.parametrize(
    ("body", "want"),
    [
        (b'{"model": "m", "metadata": {"user_id": "a", "user_id": "b"}}', Requested("m")),
        (b'{"model": "m", "messages": [{"content": "say \\"model\\""}]}', Requested("m")),
        (b'{"model": "m", "tools": [{"model": "x"}], "note": "\\u00e9"}', Requested("m")),
        (b'{"model": "model", "max_tokens": 5}', Requested("model", 5)),
    ],
)
def test_other_repeats_and_mentions_are_accepted(body: bytes, want: Requested) -> None:
    """Other keys may repeat, and `model` may appear nested or inside text, on either parse."""
    assert read_request(body, "application/json") == want


def test_a_body_that_is_not_utf8_is_a_400() -> None:
    """UTF-16 JSON (which Python would decode) is refused: its keys cannot be checked as text."""
    with pytest.raises(Refusal) as caught:
        read_request('{"model": "m"}'.encode("utf-16"), "application/json")
    assert caught.value.status == 400


def test_deep_nesting_is_a_400() -> None:
    """A body nested too deep for the parser is a clear 400, not a crash."""
    with pytest.raises(Refusal) as caught:
        read_request(b"[" * 100_000 + b"]" * 100_000, "application/json")
    assert caught.value.status == 400


def test_allow_list_requires_a_readable_model() -> None:
    """With an allow-list, a route whose body names the model must name one it can read."""
    allowing = settings(llm_models="claude-haiku-*")
    check_model(allowing, None, required=False)
    check_model(settings(), None, required=True)
    with pytest.raises(Refusal) as caught:
        check_model(allowing, None, required=True)
    assert caught.value.status == 400


MESSAGES_ROUTE = route_for("POST", b"/proxy/anthropic/v1/messages")
COUNT_ROUTE = route_for("POST", b"/proxy/anthropic/v1/messages/count_tokens")


@pytest.mark.parametrize(
    ("route", "requested", "size", "per_day", "want"),
    [
        (MESSAGES_ROUTE, Requested("m", 64), 400, 10_000, 164),
        (MESSAGES_ROUTE, Requested("m", 64), 401, 10_000, 165),
        (MESSAGES_ROUTE, Requested("m", 10**30), 400, 10_000, 10_000),
        (MESSAGES_ROUTE, Requested("m", None), 400, 0, 0),
        (COUNT_ROUTE, Requested("m", None), 400, 10_000, 0),
    ],
)
def test_reservation(
    route: Route, requested: Requested, size: int, per_day: int, want: int
) -> None:
    """A call reserves its input estimate plus max_tokens, capped at the quota; free calls none."""
    assert reservation(route, requested, size, per_day) == want


def test_reservation_needs_max_tokens_under_a_quota() -> None:
    """Under a daily quota a Messages call must bound its output with max_tokens."""
    with pytest.raises(Refusal) as caught:
        reservation(MESSAGES_ROUTE, Requested("m", None), 10, 1000)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("tokens_today", "incoming", "refused"),
    [(800, 100, False), (800, 101, True), (900, 0, True), (899, 1, False), (0, 901, True)],
)
def test_incoming_input_must_fit(tokens_today: int, incoming: int, refused: bool) -> None:
    """A call is let in only while what is used or reserved plus its input fits the quota."""
    load = LOAD | {"tokens_today": tokens_today}
    if not refused:
        check_limits(0, 900, load, incoming)
        return
    with pytest.raises(Refusal) as caught:
        check_limits(0, 900, load, incoming)
    assert (caught.value.status, caught.value.retry_after) == (429, 3600)
    assert ("does not fit" in caught.value.message) is (tokens_today < 900)


def test_input_estimate_rounds_up() -> None:
    """Every started four bytes of body count as one input token."""
    assert [input_estimate(n) for n in (0, 1, 4, 5)] == [0, 1, 1, 2]


def test_unknown_tokens_expire_and_stay_bounded() -> None:
    """Negative answers expire after their TTL and the oldest go first when the map is full."""
    expired = UnknownTokens(ttl=-1)
    expired.add("h")
    assert "h" not in expired
    assert len(expired) == 0
    unknown = UnknownTokens(size=3)
    for key in ("a", "b", "c", "d"):
        unknown.add(key)
    assert len(unknown) == 3
    assert "a" not in unknown
    assert all(key in unknown for key in ("b", "c", "d"))


# A JSON object as its pairs in order (so keys can repeat), with keys spelt plainly or escaped.
@dataclass(frozen=True)
class Obj:
    pairs: tuple[tuple[str, bool, Any], ...]


_KEYS = st.sampled_from(["model", "max_tokens", "a", 'say "model"'])
_LEAVES = st.one_of(st.sampled_from(["model", "m", 'x "model" y']), st.integers(1, 9))


def _objects(children: Any) -> Any:
    pairs = st.lists(st.tuples(_KEYS, st.booleans(), children), max_size=4)
    return pairs.map(lambda found: Obj(tuple(found)))


_VALUES = st.recursive(
    _LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=3), _objects(inner))
)


def _key(name: str, escaped: bool) -> str:
    if not escaped:
        return json.dumps(name)
    return '"' + "".join(f"\\u{ord(c):04x}" for c in name) + '"'


def _write(value: Any) -> str:
    if isinstance(value, Obj):
        items = (f"{_key(k, escaped)}: {_write(v)}" for k, escaped, v in value.pairs)
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_write(v) for v in value) + "]"
    return json.dumps(value)


def _repeats(value: Any) -> bool:
    if isinstance(value, Obj):
        keys = [k for k, _, _ in value.pairs]
        if any(keys.count(k) > 1 for k in ("model", "max_tokens")):
            return True
        return any(_repeats(v) for _, _, v in value.pairs)
    return isinstance(value, list) and any(_repeats(v) for v in value)


@given(_objects(_VALUES))
def test_repeats_are_found_however_the_body_is_spelt(document: Obj) -> None:
    """A body is refused exactly when some object gives `model` or `max_tokens` twice."""
    body = _write(document).encode()
    if not _repeats(document):
        read_request(body, "application/json")
        return
    with pytest.raises(Refusal, match="more than once"):
        read_request(body, "application/json")
