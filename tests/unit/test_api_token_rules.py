"""The pure rules of API tokens: their form, the Bearer header, and what a grant allows."""

from __future__ import annotations

import pytest

from agentserver.auth.api_tokens import Grant, bearer_of, looks_like_ours
from agentserver.auth.tokens import API_TOKEN_PREFIX, new_api_token


def test_new_tokens_carry_the_prefix_and_differ() -> None:
    """Every token starts with `ast_` (so scanners spot it) and is fresh each time."""
    tokens = {new_api_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(t.startswith(API_TOKEN_PREFIX) and len(t) > 40 for t in tokens)
    assert all(looks_like_ours(t) for t in tokens)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Basic dXNlcjpwdw==", None),
        ("Bearer ast_abc", "ast_abc"),
        ("bearer   ast_abc ", "ast_abc"),
        ("Bearer", ""),
    ],
)
def test_bearer_of_reads_only_the_bearer_scheme(header: str | None, token: str | None) -> None:
    """Only `Bearer` counts (any case); other schemes are not ours to judge."""
    assert bearer_of(header) == token


def test_not_our_form_is_never_looked_up() -> None:
    """A token without the prefix, or absurdly long, is no token of ours."""
    assert not looks_like_ours("abc")
    assert not looks_like_ours(API_TOKEN_PREFIX + "x" * 500)


@pytest.mark.parametrize(
    ("scope", "method", "allowed"),
    [
        ("read", "GET", True),
        ("read", "head", True),
        ("read", "POST", False),
        ("read", "DELETE", False),
        ("full", "DELETE", True),
        ("full", "PATCH", True),
    ],
)
def test_scope_caps_the_methods(scope: str, method: str, allowed: bool) -> None:
    """A read token may only GET/HEAD; a full one may call anything."""
    assert Grant("t", scope, None).may_call(method) is allowed


def test_a_workspace_limit_reaches_only_that_workspace() -> None:
    """Unlimited reaches every workspace; limited reaches only its own."""
    assert Grant("t", "full", None).reaches("w1")
    assert Grant("t", "full", "w1").reaches("w1")
    assert not Grant("t", "full", "w1").reaches("w2")
