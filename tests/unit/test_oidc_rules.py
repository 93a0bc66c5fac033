"""The pure rules behind SSO sign-in: linking decisions, usernames, domains, ID-token checks."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import pytest
from authlib.integrations.base_client.errors import OAuthError
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError
from joserfc.jwk import KeySet, OctKey, RSAKey

from agentserver.auth import passwords
from agentserver.auth.identities import (
    Create,
    ExternalIdentity,
    Link,
    Policy,
    Refuse,
    SignIn,
    SignInFailed,
    decide,
    domain_allowed,
    sanitise_username,
    username_candidates,
)
from agentserver.auth.oidc import (
    flow_for,
    parse_discovery,
    primary_verified,
    provider_errors,
    providers_from_settings,
    verify_id_token,
)
from agentserver.errors import ConfigError
from agentserver.settings import build_settings

ISSUER = "https://idp.example.com"
CLIENT = "our-client"
NONCE = "n-123"


def identity(email: str | None = "a@example.com", verified: bool = True) -> ExternalIdentity:
    return ExternalIdentity(provider=ISSUER, subject="s1", email=email, email_verified=verified)


@pytest.mark.parametrize(
    ("ident", "policy", "linked", "owner", "may_create", "expected"),
    [
        (identity(), Policy(), "u1", None, True, SignIn("u1")),
        (identity("new@other.org"), Policy(), "u1", ("u2", True), True, SignIn("u1")),
        (identity("new@other.org"), Policy(), "u1", ("u2", False), True, SignIn("u1")),
        (identity(), Policy(), None, ("u2", True), True, Link("u2")),
        (
            identity(),
            Policy(),
            None,
            ("u2", False),
            True,
            Refuse(409, "account_email_unconfirmed", ""),
        ),
        (
            identity(verified=False),
            Policy(),
            None,
            ("u2", True),
            True,
            Refuse(409, "email_not_verified", ""),
        ),
        (
            identity(),
            Policy(link_by_email=False),
            None,
            ("u2", True),
            True,
            Refuse(409, "email_taken", ""),
        ),
        (identity(), Policy(), None, None, True, Create("a@example.com")),
        (identity(verified=False), Policy(), None, None, True, Create(None)),
        (identity(None, False), Policy(), None, None, True, Create(None)),
        (identity(), Policy(), None, None, False, Refuse(403, "registration_closed", "")),
        (
            identity(),
            Policy(allowed_domains=("other.org",)),
            "u1",
            None,
            True,
            Refuse(403, "domain_not_allowed", ""),
        ),
    ],
)
def test_decide_table(
    ident: ExternalIdentity,
    policy: Policy,
    linked: str | None,
    owner: tuple[str, bool] | None,
    may_create: bool,
    expected: object,
) -> None:
    """Each combination of identity, policy and existing accounts (with or without a vouched-for
    email) has exactly one outcome."""
    got = decide(
        ident,
        policy,
        linked_user=linked,
        email_owner=owner[0] if owner else None,
        owner_email_verified=owner[1] if owner else False,
        may_create=may_create,
    )
    if isinstance(expected, Refuse):
        assert isinstance(got, Refuse)
        assert (got.status, got.code) == (expected.status, expected.code)
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("email", "verified", "allowed"),
    [
        ("a@example.com", True, True),
        ("a@EXAMPLE.COM", True, True),
        ("a@evil-example.com", True, False),
        ("a@example.com.evil.org", True, False),
        ("a@sub.example.com", True, False),
        ("a@example.com@evil.org", True, False),
        ("a@example.com", False, False),
        (None, False, False),
    ],
)
def test_domain_allow_list_is_exact(email: str | None, verified: bool, allowed: bool) -> None:
    """The allow-list compares the whole domain after the last @ and needs a verified email."""
    assert domain_allowed(identity(email, verified), ("example.com", "@Corp.example")) is allowed


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        ("octocat", "octocat"),
        ("Octo Cat", "octo-cat"),
        ("José.García", "jose.garcia"),
        ("alice@example.com", "alice"),
        ("a", "a-user"),
        ("--__..", None),
        ("x" * 60, "x" * 28),
        ("a..b__c", "a.b_c"),
    ],
)
def test_sanitise_username(hint: str, expected: str | None) -> None:
    """Provider names become valid usernames, or nothing when no usable characters remain."""
    assert sanitise_username(hint) == expected


@given(st.text(max_size=80))
def test_sanitised_usernames_always_pass_our_rules(hint: str) -> None:
    """Whatever a provider sends, the derived name is None or passes check_username."""
    name = sanitise_username(hint)
    if name is not None:
        assert passwords.check_username(name) == name


def test_username_candidates_count_up_then_fall_back() -> None:
    """Collisions try name-2, name-3 …; with no usable hint the base is `user`."""
    first = username_candidates(("Bob Smith",))
    assert [next(first) for _ in range(3)] == ["bob-smith", "bob-smith-2", "bob-smith-3"]
    assert next(username_candidates(("@@@",))) == "user"


def _key(kid: str = "k1") -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid})


KEY = _key()
KEYS = KeySet([KEY])


def token(key: Any = KEY, alg: str = "RS256", **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "s1",
        "exp": now + 300,
        "iat": now,
        "nonce": NONCE,
    }
    claims.update(changes)
    for name in [k for k, v in changes.items() if v is None]:
        claims.pop(name)
    return jwt.encode({"alg": alg, "kid": getattr(key, "kid", None) or "k1"}, claims, key, [alg])


def check(raw: str, keys: KeySet = KEYS) -> dict[str, Any]:
    return verify_id_token(
        raw,
        keys,
        issuer=ISSUER,
        client_id=CLIENT,
        nonce=NONCE,
        algorithms=("RS256",),
        now=time.time(),
    )


def test_valid_id_token_passes() -> None:
    """A token signed by the provider's key, for us, fresh and with our nonce is accepted."""
    assert check(token())["sub"] == "s1"
    assert check(token(aud=[CLIENT, "other"], azp=CLIENT))["sub"] == "s1"


def _unsigned() -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "s1",
        "exp": now + 60,
        "iat": now,
        "nonce": NONCE,
    }
    return f"{part({'alg': 'none'})}.{part(claims)}."


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(lambda: token(iss="https://evil.example.com"), id="issuer"),
        pytest.param(lambda: token(aud="someone-else"), id="audience"),
        pytest.param(lambda: token(aud=[CLIENT, "other"]), id="multi-aud-without-azp"),
        pytest.param(lambda: token(azp="someone-else"), id="azp"),
        pytest.param(lambda: token(exp=int(time.time()) - 120), id="expired"),
        pytest.param(lambda: token(iat=int(time.time()) + 600), id="issued-in-future"),
        pytest.param(lambda: token(iat=int(time.time()) - 7200), id="issued-long-ago"),
        pytest.param(lambda: token(nonce="other"), id="nonce"),
        pytest.param(lambda: token(nonce=None), id="no-nonce"),
        pytest.param(lambda: token(sub=None), id="no-sub"),
        pytest.param(lambda: token(_key("k1")), id="other-key-same-kid"),
        pytest.param(
            lambda: token(OctKey.import_key("our-client-secret-" * 3), alg="HS256"), id="hs256"
        ),
        pytest.param(_unsigned, id="alg-none"),
        pytest.param(lambda: token()[:-4] + "AAAA", id="bad-signature"),
    ],
)
def test_bad_id_tokens_are_refused(raw: Any) -> None:
    """Every way an ID token can be wrong is refused with a 401 sign-in failure."""
    with pytest.raises(SignInFailed) as caught:
        check(raw())
    assert caught.value.status == 401


def test_unknown_key_id_asks_for_a_key_refresh() -> None:
    """A kid not in the key set is reported separately, so the caller can refetch the JWKS."""
    with pytest.raises(InvalidKeyIdError):
        check(token(_key("rotated")))


def test_discovery_document_checks() -> None:
    """Discovery must name the configured issuer; only asymmetric algorithms are kept."""
    doc = {
        "issuer": ISSUER + "/",
        "authorization_endpoint": f"{ISSUER}/auth",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
        "id_token_signing_alg_values_supported": ["none", "HS256", "RS256", "ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post"],
    }
    meta = parse_discovery(doc, ISSUER)
    assert meta.issuer == ISSUER + "/"
    assert meta.algorithms == ("RS256", "ES256")
    assert meta.token_auth == "client_secret_post"
    with pytest.raises(ValueError, match="another issuer"):
        parse_discovery({**doc, "issuer": "https://evil.example.com"}, ISSUER)
    with pytest.raises(ValueError, match="jwks_uri"):
        parse_discovery({**doc, "jwks_uri": None}, ISSUER)


def test_github_email_must_be_primary_and_verified() -> None:
    """Only GitHub's primary email with a boolean `verified: true` counts."""
    emails = [
        {"email": "x@example.com", "primary": False, "verified": True},
        {"email": "p@example.com", "primary": True, "verified": True},
    ]
    assert primary_verified(emails) == "p@example.com"
    emails[1]["verified"] = "true"
    assert primary_verified(emails) is None
    assert primary_verified({"message": "Bad credentials"}) is None


def test_flow_secrets_are_bound_to_browser_and_state() -> None:
    """The PKCE verifier and nonce depend on both the browser secret and the state."""
    flow = flow_for("browser-secret", "state-1")
    assert len(flow.verifier) == 43
    assert flow.verifier != flow.nonce
    assert flow_for("browser-secret", "state-2").verifier != flow.verifier
    assert flow_for("other-browser", "state-1").nonce != flow.nonce
    assert flow_for("browser-secret", "state-1") == flow


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"github_client_id": "x", "github_client_secret": "y"}, "OIDC_REDIRECT_BASE_URL"),
        (
            {"github_client_id": "x", "oidc_redirect_base_url": "https://a.example"},
            "GITHUB_CLIENT_SECRET",
        ),
        (
            {
                "oidc_issuer_url": "https://idp.example",
                "oidc_client_id": "x",
                "oidc_redirect_base_url": "https://a.example",
            },
            "OIDC_CLIENT_SECRET",
        ),
    ],
)
def test_half_configured_providers_stop_the_start(values: dict[str, str], names: str) -> None:
    """A provider missing a setting is a startup error that names the missing variable."""
    with pytest.raises(ConfigError, match=names):
        providers_from_settings(build_settings(values, {}))


def test_configured_providers() -> None:
    """Both providers, or none, are built from settings."""
    assert providers_from_settings(build_settings({}, {})) == {}
    found = providers_from_settings(
        build_settings(
            {
                "github_client_id": "x",
                "github_client_secret": "y",
                "oidc_issuer_url": ISSUER,
                "oidc_client_id": "c",
                "oidc_client_secret": "s",
                "oidc_redirect_base_url": "https://a.example",
            },
            {},
        )
    )
    assert list(found) == ["github", "generic"]


def test_flow_cookie_is_host_only_prefixed_on_https() -> None:
    """On https the flow cookie uses the __Host- prefix, which sandbox subdomains cannot plant."""
    from agentserver.api.oidc import flow_cookie

    assert flow_cookie(build_settings({"base_scheme": "https"}, {})) == "__Host-agentserver_oauth"
    assert flow_cookie(build_settings({}, {})) == "agentserver_oauth"


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (OAuthError(error="invalid_grant"), 400, "code_rejected"),
        (OAuthError(error="bad_verification_code"), 400, "code_rejected"),
        (OAuthError(error="invalid_client"), 400, "provider_refused"),
        (httpx.ReadTimeout("slow"), 502, "provider_unavailable"),
        (httpx.ConnectError("refused"), 502, "provider_unavailable"),
        (
            httpx.HTTPStatusError(
                "boom",
                request=httpx.Request("GET", "https://idp.example"),
                response=httpx.Response(503),
            ),
            502,
            "provider_error",
        ),
        (ValueError("not json"), 502, "provider_error"),
    ],
)
def test_provider_errors_become_readable_failures(
    exc: BaseException, status: int, code: str
) -> None:
    """Timeouts, refusals, HTTP errors and garbage from a provider map to 4xx/502, never a 500."""
    with pytest.raises(SignInFailed) as caught, provider_errors("SSO"):
        _raise(exc)
    assert (caught.value.status, caught.value.code) == (status, code)
