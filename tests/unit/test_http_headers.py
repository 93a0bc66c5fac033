"""The one hop-by-hop set (agentserver/http_headers.py) and every forwarding side that uses it."""

from __future__ import annotations

import pytest

from agentserver.agent.forward import Forwarder
from agentserver.http_headers import FRAMING, FRAMING_NAMES, HOP_BY_HOP, HOP_BY_HOP_NAMES
from agentserver.llm import rules as llm
from agentserver.proxy import headers as subdomain
from agentserver.settings import build_settings

# The union of the three sets the subdomain proxy, the LLM proxy and the agent kept before
# they shared one.
EXPECTED = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
KEPT = (b"accept", b"text/plain")


def with_every_hop_by_hop_field() -> list[tuple[bytes, bytes]]:
    return [KEPT, *((name, b"x") for name in sorted(HOP_BY_HOP))]


def test_the_set_is_the_union_every_side_kept() -> None:
    """The shared set names exactly the connection-specific fields the three sides dropped."""
    assert {name.decode() for name in HOP_BY_HOP} == EXPECTED
    assert HOP_BY_HOP_NAMES == EXPECTED
    assert (
        {name.decode() for name in FRAMING}
        == FRAMING_NAMES
        == {
            "content-length",
            "transfer-encoding",
        }
    )


def test_the_subdomain_proxy_drops_every_hop_by_hop_field_both_ways() -> None:
    """Neither a sandbox's agent nor the browser receives any hop-by-hop field from us."""
    fwd = subdomain.Forwarding(client_ip=None, proto="http", host=b"oc-a.localhost")
    sent = subdomain.request_headers(with_every_hop_by_hop_field(), b"Basic x", fwd)
    assert not {name for name, _ in sent} & HOP_BY_HOP
    assert KEPT in sent
    assert subdomain.response_headers(with_every_hop_by_hop_field()) == [KEPT]


def test_the_llm_proxy_drops_every_hop_by_hop_field_both_ways() -> None:
    """Neither Anthropic nor the calling sandbox receives any hop-by-hop field from us."""
    settings = build_settings({"listen": "127.0.0.1:0", "anthropic_api_key": "real"}, {})
    sent = llm.upstream_headers(with_every_hop_by_hop_field(), settings)
    assert not {name for name, _ in sent} & HOP_BY_HOP
    assert KEPT in sent
    assert llm.response_headers(with_every_hop_by_hop_field()) == [KEPT]


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_the_agent_drops_every_hop_by_hop_field(name: str) -> None:
    """The local agent never passes a hop-by-hop field on to its opencode."""
    async with Forwarder("http://127.0.0.1:1", None, print) as forwarder:
        out = forwarder.headers_for_opencode([("accept", "text/plain"), (name, "x")])
    assert out == [("accept", "text/plain")]
