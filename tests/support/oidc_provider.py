"""A real OpenID provider for tests, on loopback: authlib's authorization server under quart-trio.

The authorization endpoint has no login form: the test plays the person by adding
`login_as=<user key>` (or `deny=1`) to the authorization URL our server redirected to.
`knobs` make the provider misbehave the ways a hostile or broken provider could.
"""

from __future__ import annotations

import json
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    OAuth2Error,
    OAuth2Payload,
    OAuth2Request,
    grants,
)
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin
from authlib.oidc.core.grants import OpenIDCode
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from joserfc.jwk import RSAKey
from quart import Response, request
from quart_trio import QuartTrio

CLIENT_ID = "agentserver-test-client"
CLIENT_SECRET = "idp-client-secret-" + "x" * 16


def loopback_socket() -> socket.socket:
    """A bound (not yet listening) loopback socket: its port is known before anything serves."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def serve_app(
    app: Any,
    sock: socket.socket,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app with hypercorn on `sock` until `shutdown` is set."""
    sock.listen(64)
    sock.setblocking(False)
    config = Config()
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    await worker_serve(
        asgi, config, sockets=sockets, shutdown_trigger=shutdown.wait, task_status=task_status
    )


@dataclass
class Knobs:
    """Ways to make the provider misbehave; all off by default."""

    nonce: str | None = None  # put this nonce in ID tokens instead of the one asked for
    audience: str | None = None  # issue ID tokens to this audience instead of our client
    expired: bool = False  # issue ID tokens that expired ten minutes ago
    token_status: int | None = None  # answer the token endpoint with this HTTP error


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in ("openid", "profile", "email"))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return client_secret == self.client_secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "client_secret_basic"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str:
        return "0"

    def get_amr(self) -> list[str]:
        return ["pwd"]


class _Payload(OAuth2Payload):
    def __init__(self, data: dict[str, str]) -> None:
        self._data = data

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        values: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in self._data.items():
            values[key].append(value)
        return values


class _Request(OAuth2Request):
    """authlib's request, built from what quart parsed."""

    def __init__(
        self, method: str, uri: str, headers: Any, args: dict[str, str], form: dict[str, str]
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self._args, self._form = args, form
        self.payload = _Payload({**args, **form})

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic"]

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        idp: OpenIDProvider = self.server.idp
        idp.codes[code] = Code(
            code=code,
            client_id=request.client.client_id,
            redirect_uri=data.get("redirect_uri"),
            scope=data.get("scope", ""),
            user=request.user,
            nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
        )

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        found = self.server.idp.codes.get(code)
        return found if found is not None and found.client_id == client.client_id else None

    def delete_authorization_code(self, authorization_code: Code) -> None:
        self.server.idp.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: Code) -> str:
        return authorization_code.user


class OpenID(OpenIDCode):
    """ID tokens signed with the provider's RSA key; the knobs bend their claims."""

    def __init__(self, idp: OpenIDProvider) -> None:
        super().__init__(require_nonce=True)
        self.idp = idp

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return any(c.nonce == nonce for c in self.idp.codes.values())

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return self.idp.key

    def get_client_algorithm(self, client: Client) -> str:
        return "RS256"

    def get_encode_header(self, client: Client) -> dict[str, str]:
        return {"alg": "RS256", "kid": self.idp.key.kid or "", "typ": "JWT"}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        knobs, now = self.idp.knobs, int(time.time())
        claims: dict[str, Any] = {
            "iss": self.idp.url,
            "aud": [knobs.audience or client.get_client_id()],
        }
        if knobs.expired:
            claims.update(iat=now - 1200, exp=now - 600)
        else:
            claims.update(iat=now, exp=now + 300)
        return claims

    def get_authorization_code_claims(self, authorization_code: Code) -> dict[str, Any]:
        claims: dict[str, Any] = super().get_authorization_code_claims(authorization_code)
        if self.idp.knobs.nonce is not None:
            claims["nonce"] = self.idp.knobs.nonce
        return claims

    def generate_user_info(self, user: str, scope: str) -> dict[str, Any]:
        return dict(self.idp.users[user])


class Server(AuthorizationServer):
    def __init__(self, idp: OpenIDProvider) -> None:
        super().__init__(scopes_supported=["openid", "profile", "email"])
        self.idp = idp
        self.register_token_generator(
            "default", BearerTokenGenerator(lambda *a, **k: generate_token(42))
        )
        self.register_grant(CodeGrant, [CodeChallenge(required=True), OpenID(idp)])

    def query_client(self, client_id: str) -> Client | None:
        return self.idp.client if client_id == self.idp.client.client_id else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        self.idp.issued.append(token)  # the same dict gets its id_token added afterwards

    def create_oauth2_request(self, request: Any) -> Any:
        return request

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        text = json.dumps(body) if isinstance(body, dict) else (body or "")
        return Response(text, status=status, headers=dict(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class OpenIDProvider:
    """The provider's state: registered users (claims by key), codes, knobs and signing key."""

    redirect_uris: list[str]
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    knobs: Knobs = field(default_factory=Knobs)
    codes: dict[str, Code] = field(default_factory=dict)
    issued: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    key: RSAKey = field(
        default_factory=lambda: RSAKey.generate_key(
            2048, parameters={"kid": generate_token(8), "use": "sig", "alg": "RS256"}
        )
    )

    @property
    def client(self) -> Client:
        return Client(CLIENT_ID, CLIENT_SECRET, self.redirect_uris)

    def add_user(self, key: str, **claims: Any) -> None:
        """Register a person; `claims` are what their ID token says (sub defaults to a fixed id)."""
        self.users[key] = {"sub": f"sub-{key}", **claims}

    def app(self) -> QuartTrio:
        app = QuartTrio("test-idp")
        server = Server(self)

        async def oauth_request() -> _Request:
            form = (await request.form).to_dict() if request.method == "POST" else {}
            return _Request(
                request.method, request.url, request.headers, request.args.to_dict(), form
            )

        @app.get("/.well-known/openid-configuration")
        async def discovery() -> dict[str, Any]:
            return {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "code_challenge_methods_supported": ["S256"],
            }

        @app.get("/jwks")
        async def jwks() -> dict[str, Any]:
            return {"keys": [self.key.as_dict(private=False)]}

        @app.get("/authorize")
        async def authorize() -> Response:
            login_as = request.args.get("login_as")
            if not request.args.get("deny") and login_as not in self.users:
                return Response("choose a person with login_as=<key>", status=400)
            grant_user = None if request.args.get("deny") else login_as
            oauth = await oauth_request()
            try:
                grant = server.get_consent_grant(oauth, end_user=grant_user)
            except OAuth2Error as error:
                failed: Response = server.handle_error_response(oauth, error)
                return failed
            response: Response = server.create_authorization_response(
                oauth, grant_user=grant_user, grant=grant
            )
            return response

        @app.post("/token")
        async def token() -> Response:
            if self.knobs.token_status:
                return Response("upstream trouble", status=self.knobs.token_status)
            response: Response = server.create_token_response(await oauth_request())
            return response

        return app

    async def serve(
        self,
        sock: socket.socket,
        shutdown: trio.Event,
        *,
        task_status: trio.TaskStatus[OpenIDProvider] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_app, self.app(), sock, shutdown))
            task_status.started(self)


async def open_provider(
    nursery: trio.Nursery, redirect_uri: str, sock: socket.socket | None = None
) -> OpenIDProvider:
    """Start a provider in `nursery` (on `sock` if given) that accepts `redirect_uri`."""
    provider = OpenIDProvider(redirect_uris=[redirect_uri])
    shutdown = trio.Event()
    started: OpenIDProvider = await nursery.start(
        partial(provider.serve, sock or loopback_socket(), shutdown)
    )
    return started
