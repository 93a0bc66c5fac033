"""The one place ids and secrets are minted (auth/tokens.py): their shapes and their hashes."""

from __future__ import annotations

import base64
import re
import string

import pytest

from agentserver.auth import tokens
from agentserver.auth.tokens import hash_token, new_id, new_token, random_text, same
from agentserver.proxy.routing import Target, resolve

DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def test_ids_are_sixteen_lower_case_base36_characters() -> None:
    """A default id is 16 characters of a-z and 0-9, and ids are drawn afresh each time."""
    ids = {new_id() for _ in range(200)}
    assert len(ids) == 200
    for sandbox_id in ids:
        assert len(sandbox_id) == 16
        assert set(sandbox_id) <= set(string.ascii_lowercase + string.digits)
    assert {len(new_id(6)) for _ in range(20)} == {6}


def test_a_sandbox_id_makes_a_host_the_proxy_routes_back_to_it() -> None:
    """`oc-{id}` and `claw-{id}` are valid DNS labels, and the subdomain routing finds the same
    id in them however the browser cases the host."""
    for _ in range(200):
        sandbox_id = new_id()
        for prefix, kind in (("oc-", "opencode"), ("claw-", "openclaw")):
            assert DNS_LABEL.fullmatch(prefix + sandbox_id)
            host = f"{prefix}{sandbox_id}.Example.COM:8080".upper()
            assert resolve(host, "example.com:8080") == Target(kind, sandbox_id)


def test_tokens_are_url_safe_with_the_entropy_asked_for() -> None:
    """A token is unpadded URL-safe base64 of `nbytes` random bytes."""
    for nbytes in (18, 24, 32):
        token = new_token(nbytes)
        assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
        assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) == nbytes
    assert new_token() != new_token()


def test_the_stored_form_is_hex_sha256() -> None:
    """A token is stored as the hex SHA-256 of its text, the same every time."""
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    token = new_token()
    assert hash_token(token) == hash_token(token) != token


def test_same_compares_secrets() -> None:
    """`same` is true only for equal secrets."""
    token = new_token()
    assert same(token, token)
    assert not same(token, token + "x")
    assert not same(token, new_token())


def test_random_text_draws_only_from_its_alphabet() -> None:
    """`random_text` gives the length asked for, from the alphabet given, differing each time."""
    drawn = {random_text(12, "ab2") for _ in range(50)}
    assert len(drawn) > 1
    assert all(len(text) == 12 and set(text) <= set("ab2") for text in drawn)


def test_an_agent_code_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """`agent connect --code -Ab…` would read the code as an option: such draws are redrawn."""
    draws = iter(["-starts-with-a-dash", "_fine-code"])
    monkeypatch.setattr(tokens.secrets, "token_urlsafe", lambda nbytes: next(draws))
    assert tokens.new_code() == "_fine-code"
