"""The OAuth 2 / OpenID Connect protocol for signing in with GitHub or any OIDC provider."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import trio
from authlib.integrations.base_client.errors import OAuthError
from joserfc import jwt
from joserfc.errors import ClaimError, ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from agentserver.auth import passwords
from agentserver.auth.identities import ExternalIdentity, SignInFailed
from agentserver.errors import ConfigError, Invalid
from agentserver.settings import Settings

with warnings.catch_warnings():
    # authlib 1.9 asks for an `httpx2` package at import; its httpx integration still works on
    # httpx 0.28, and on trio (httpx runs on anyio; the client's only lock is anyio's).
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

log = logging.getLogger(__name__)

FLOW_LIFETIME = 600  # seconds a browser has to come back from the provider
HTTP_TIMEOUT = 10.0
LEEWAY = 60  # clock skew allowed on exp / iat
MAX_TOKEN_AGE = 3600  # an ID token issued longer ago than this is not from this sign-in
# Asymmetric algorithms only: HS* would make the client secret a signing key, and never "none".
SIGNING_ALGS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
GITHUB_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
MAX_ORG_PAGES = 10


@dataclass(frozen=True, slots=True)
class Flow:
    """The secrets of one sign-in: `state` travels in URLs, the rest never leaves this server
    except the PKCE verifier (to the token endpoint) and the nonce (inside the ID token)."""

    state: str
    verifier: str
    nonce: str


def _derive(browser_secret: str, state: str, purpose: str) -> str:
    mac = hmac.new(browser_secret.encode(), f"{purpose}:{state}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()  # 43 chars, a valid PKCE verifier


def flow_for(browser_secret: str, state: str) -> Flow:
    """Verifier and nonce derived from the browser's cookie secret: the database holds neither."""
    return Flow(
        state=state,
        verifier=_derive(browser_secret, state, "pkce"),
        nonce=_derive(browser_secret, state, "nonce"),
    )


class Provider(Protocol):
    """One way to sign in: an id for URLs, a name for people, and the two protocol steps."""

    id: str
    name: str

    async def authorization_url(self, redirect_uri: str, flow: Flow) -> str: ...

    async def identity(self, code: str, redirect_uri: str, flow: Flow) -> ExternalIdentity: ...


def failure(message: str, status: int = 502, code: str = "provider_error") -> SignInFailed:
    return SignInFailed(message, status=status, code=code)


@contextmanager
def provider_errors(name: str) -> Iterator[None]:
    """Translate what the HTTP client and authlib raise into readable sign-in failures."""
    try:
        yield
    except OAuthError as exc:
        error = str(getattr(exc, "error", "") or "error")
        if error in ("invalid_grant", "bad_verification_code"):
            raise failure(
                "The sign-in code was rejected (it expired or was already used). "
                "Please start the sign-in again.",
                400,
                "code_rejected",
            ) from None
        raise failure(
            f"{name} refused the sign-in ({error[:60]}).", 400, "provider_refused"
        ) from None
    except httpx.TimeoutException:
        raise failure(
            f"{name} did not answer in time; try again later.", 502, "provider_unavailable"
        ) from None
    except httpx.HTTPStatusError as exc:
        raise failure(f"{name} answered with an error (HTTP {exc.response.status_code}).") from None
    except (httpx.TransportError, httpx.InvalidURL):
        raise failure(
            f"Could not reach {name}; try again later.", 502, "provider_unavailable"
        ) from None
    except ValueError:
        raise failure(f"{name} sent an answer this server does not understand.") from None


def _email(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return passwords.check_email(value)
    except Invalid:
        return None


def verify_id_token(
    raw: str,
    keys: KeySet,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    algorithms: tuple[str, ...],
    now: float,
) -> dict[str, Any]:
    """An ID token's claims, after checking signature, issuer, audience, expiry, iat, nonce."""

    def bad(what: str) -> SignInFailed:
        return failure(f"The identity token was rejected: {what}.", 401, "id_token_invalid")

    try:
        claims = jwt.decode(raw, keys, algorithms=list(algorithms)).claims
    except InvalidKeyIdError:
        raise
    except (JoseError, ValueError, TypeError):
        raise bad("its signature could not be verified") from None
    registry = jwt.JWTClaimsRegistry(
        now=int(now),
        leeway=LEEWAY,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": client_id},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise bad("it has expired") from None
    except ClaimError as exc:
        raise bad(f"its {exc.claim} claim is missing or wrong") from None
    audience = claims["aud"]
    several = isinstance(audience, list) and len(audience) > 1
    if (several or "azp" in claims) and claims.get("azp") != client_id:
        raise bad("it was issued to another client (azp)")
    got = claims.get("nonce")
    if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
        raise bad("its nonce does not belong to this sign-in")
    if claims["iat"] < now - MAX_TOKEN_AGE:
        raise bad("it was issued too long ago")
    return claims


@dataclass(frozen=True, slots=True)
class Metadata:
    """The parts of an OpenID provider's discovery document we use."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]
    token_auth: str


def parse_discovery(doc: object, configured_issuer: str) -> Metadata:
    """A checked discovery document: its issuer must be the configured one (trailing `/` aside)."""
    if not isinstance(doc, dict):
        raise ValueError("the discovery document is not a JSON object")
    fields = {}
    for name in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = doc.get(name)
        if not isinstance(value, str) or not value.startswith(("https://", "http://")):
            raise ValueError(f"the discovery document has no valid {name}")
        fields[name] = value
    if fields["issuer"].rstrip("/") != configured_issuer.rstrip("/"):
        raise ValueError(f"the discovery document names another issuer ({fields['issuer']})")
    offered = doc.get("id_token_signing_alg_values_supported")
    algorithms = tuple(a for a in SIGNING_ALGS if isinstance(offered, list) and a in offered)
    methods = doc.get("token_endpoint_auth_methods_supported")
    basic = not isinstance(methods, list) or "client_secret_basic" in methods
    return Metadata(
        **fields,
        algorithms=algorithms or ("RS256",),
        token_auth="client_secret_basic" if basic else "client_secret_post",
    )


class OidcProvider:
    """Any OpenID Connect provider, found through discovery at OIDC_ISSUER_URL."""

    id = "generic"
    name = "SSO"

    def __init__(self, issuer_url: str, client_id: str, client_secret: str) -> None:
        self.issuer_url = issuer_url
        self.client_id = client_id
        self._secret = client_secret
        self._metadata: Metadata | None = None
        self._keys: KeySet | None = None
        self._lock = trio.Lock()

    async def _get_json(self, url: str) -> Any:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            response = await client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            return response.json()

    async def metadata(self) -> Metadata:
        """The discovery document, fetched once (again at the next sign-in if it failed)."""
        async with self._lock:
            if self._metadata is None:
                url = f"{self.issuer_url.rstrip('/')}/.well-known/openid-configuration"
                with provider_errors(self.name):
                    self._metadata = parse_discovery(await self._get_json(url), self.issuer_url)
            return self._metadata

    async def _key_set(self, refresh: bool = False) -> KeySet:
        metadata = await self.metadata()
        async with self._lock:
            if self._keys is None or refresh:
                with provider_errors(self.name):
                    data = await self._get_json(metadata.jwks_uri)
                    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
                        raise ValueError("the JWKS is not a key set")
                    try:
                        self._keys = KeySet.import_key_set(data)  # type: ignore[arg-type]
                    except JoseError as exc:
                        raise ValueError("the JWKS holds a key this server cannot read") from exc
            return self._keys

    def _client(self, redirect_uri: str, metadata: Metadata) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self._secret,
            token_endpoint_auth_method=metadata.token_auth,
            scope="openid profile email",
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=HTTP_TIMEOUT,
        )

    async def authorization_url(self, redirect_uri: str, flow: Flow) -> str:
        metadata = await self.metadata()
        async with self._client(redirect_uri, metadata) as client:
            url, _ = client.create_authorization_url(
                metadata.authorization_endpoint,
                state=flow.state,
                code_verifier=flow.verifier,
                nonce=flow.nonce,
            )
        return str(url)

    async def identity(self, code: str, redirect_uri: str, flow: Flow) -> ExternalIdentity:
        metadata = await self.metadata()
        async with self._client(redirect_uri, metadata) as client:
            with provider_errors(self.name):
                token = await client.fetch_token(
                    metadata.token_endpoint,
                    code=code,
                    code_verifier=flow.verifier,
                    grant_type="authorization_code",
                )
        raw = token.get("id_token")
        if not isinstance(raw, str):
            raise failure(f"{self.name} did not send an identity token.")
        claims = await self._claims(raw, metadata, flow.nonce)
        return ExternalIdentity(
            provider=metadata.issuer,
            subject=claims["sub"],
            email=_email(claims.get("email")),
            # Strictly the JSON boolean true: "true", 1 or an absent claim do not count.
            email_verified=claims.get("email_verified") is True,
            username_hints=tuple(
                h
                for h in (claims.get("preferred_username"), claims.get("email"), claims.get("name"))
                if isinstance(h, str)
            ),
            provider_name=self.name,
        )

    async def _claims(self, raw: str, metadata: Metadata, nonce: str) -> dict[str, Any]:
        def check(keys: KeySet) -> dict[str, Any]:
            return verify_id_token(
                raw,
                keys,
                issuer=metadata.issuer,
                client_id=self.client_id,
                nonce=nonce,
                algorithms=metadata.algorithms,
                now=time.time(),
            )

        try:
            return check(await self._key_set())
        except InvalidKeyIdError:
            pass  # the provider may have rotated its keys: fetch them once more
        try:
            return check(await self._key_set(refresh=True))
        except InvalidKeyIdError:
            raise failure(
                "The identity token was signed with an unknown key.", 401, "id_token_invalid"
            ) from None


class GitHubProvider:
    """GitHub OAuth apps: profile from the REST API, primary verified email, org allow-list."""

    id = "github"
    name = "GitHub"

    def __init__(self, settings: Settings, client_id: str, client_secret: str) -> None:
        self.oauth_url = settings.github_oauth_url
        self.api_url = settings.github_api_url
        self.allowed_orgs = frozenset(o.lower() for o in settings.github_allowed_orgs)
        self.client_id = client_id
        self._secret = client_secret
        # Private org memberships are only listed with read:org.
        self.scope = "user:email read:org" if self.allowed_orgs else "user:email"

    def _client(self, redirect_uri: str) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self._secret,
            token_endpoint_auth_method="client_secret_post",  # noqa: S106
            scope=self.scope,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=HTTP_TIMEOUT,
        )

    async def authorization_url(self, redirect_uri: str, flow: Flow) -> str:
        async with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(
                f"{self.oauth_url}/login/oauth/authorize",
                state=flow.state,
                code_verifier=flow.verifier,
            )
        return str(url)

    async def identity(self, code: str, redirect_uri: str, flow: Flow) -> ExternalIdentity:
        async with self._client(redirect_uri) as client:
            with provider_errors(self.name):
                token = await client.fetch_token(
                    f"{self.oauth_url}/login/oauth/access_token",
                    code=code,
                    code_verifier=flow.verifier,
                    grant_type="authorization_code",
                )
                if not isinstance(token.get("access_token"), str):
                    raise ValueError("no access token")
                profile = await self._get(client, f"{self.api_url}/user")
                emails = await self._get(client, f"{self.api_url}/user/emails")
                if self.allowed_orgs:
                    await self._check_orgs(client)
        if not isinstance(profile, dict) or not isinstance(profile.get("id"), int):
            raise failure("GitHub sent a profile without an account id.")
        login = profile.get("login")
        email = primary_verified(emails)
        return ExternalIdentity(
            provider=self.oauth_url,
            subject=str(profile["id"]),
            email=email,
            email_verified=email is not None,
            username_hints=tuple(h for h in (login, profile.get("name")) if isinstance(h, str)),
            provider_name=self.name,
        )

    async def _get(self, client: AsyncOAuth2Client, url: str) -> Any:
        response = await client.get(url, headers=GITHUB_HEADERS)
        response.raise_for_status()
        return response.json()

    async def _check_orgs(self, client: AsyncOAuth2Client) -> None:
        url: str | None = f"{self.api_url}/user/orgs?per_page=100"
        for _ in range(MAX_ORG_PAGES):
            if url is None:
                break
            response = await client.get(url, headers=GITHUB_HEADERS)
            response.raise_for_status()
            orgs = response.json()
            if isinstance(orgs, list) and any(
                isinstance(o, dict) and str(o.get("login", "")).lower() in self.allowed_orgs
                for o in orgs
            ):
                return
            url = response.links.get("next", {}).get("url")
            if url is not None and not url.startswith(f"{self.api_url}/"):
                url = None  # never send the token anywhere but GitHub's API
        raise failure(
            "Your GitHub account is not a member of an organisation allowed to sign in "
            "to this server.",
            403,
            "org_not_allowed",
        )


def primary_verified(emails: object) -> str | None:
    """GitHub's primary email, only if GitHub marks it verified (`"verified": true`)."""
    if not isinstance(emails, list):
        return None
    for entry in emails:
        if (
            isinstance(entry, dict)
            and entry.get("primary") is True
            and entry.get("verified") is True
        ):
            return _email(entry.get("email"))
    return None


def providers_from_settings(settings: Settings) -> dict[str, Provider]:
    """The configured providers by id; a half-configured one is a startup error naming it."""
    found: dict[str, Provider] = {}
    if settings.github_client_id or settings.github_client_secret:
        if not (settings.github_client_id and settings.github_client_secret):
            raise ConfigError(
                "GitHub sign-in needs both --github-client-id / GITHUB_CLIENT_ID and "
                "--github-client-secret / GITHUB_CLIENT_SECRET"
            )
        found["github"] = GitHubProvider(
            settings, settings.github_client_id, settings.github_client_secret
        )
    if settings.oidc_issuer_url or settings.oidc_client_id or settings.oidc_client_secret:
        if not (
            settings.oidc_issuer_url and settings.oidc_client_id and settings.oidc_client_secret
        ):
            raise ConfigError(
                "OIDC sign-in needs --oidc-issuer-url / OIDC_ISSUER_URL, "
                "--oidc-client-id / OIDC_CLIENT_ID and --oidc-client-secret / "
                "OIDC_CLIENT_SECRET"
            )
        found["generic"] = OidcProvider(
            settings.oidc_issuer_url, settings.oidc_client_id, settings.oidc_client_secret
        )
    if found and not settings.oidc_redirect_base_url:
        raise ConfigError(
            "--oidc-redirect-base-url / OIDC_REDIRECT_BASE_URL must be set to this "
            "server's external URL when GitHub or OIDC sign-in is configured"
        )
    return found


def provider_list(found: Mapping[str, Provider]) -> list[dict[str, str]]:
    """What the sign-in page shows: one button per configured provider (never any secret)."""
    return [
        {"id": p.id, "name": p.name, "loginUrl": f"/api/auth/oidc/{p.id}"} for p in found.values()
    ]
