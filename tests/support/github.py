"""A local stand-in for GitHub: its OAuth web flow and REST formats (/user, emails, orgs).

OAuth lives at the root (`/login/oauth/...`), the REST API under `/api/v3` as on GitHub
Enterprise. As with the OpenID provider, the test plays the person by adding `login_as=<login>`
(or `deny=1`) to the authorization URL.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlencode

import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from tests.support.oidc_provider import loopback_socket, serve_app

CLIENT_ID = "Iv1.standin"
CLIENT_SECRET = "github-standin-secret-" + "y" * 12


@dataclass
class Account:
    """A GitHub user as the REST API describes them."""

    login: str
    id: int
    name: str | None = None
    emails: list[dict[str, Any]] = field(default_factory=list)
    orgs: list[str] = field(default_factory=list)


@dataclass
class Grant:
    login: str
    redirect_uri: str
    challenge: str | None


@dataclass
class GitHub:
    """The stand-in's state: accounts by login, pending codes, issued tokens, failure knobs."""

    redirect_uri: str
    accounts: dict[str, Account] = field(default_factory=dict)
    codes: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # token → login
    api_status: int | None = None  # answer REST calls with this error status
    page_size: int = 100  # GitHub's largest per_page; smaller makes tests page through orgs
    url: str = ""

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v3"

    def add(
        self,
        login: str,
        email: str | None = None,
        *,
        verified: bool = True,
        orgs: list[str] | None = None,
        name: str | None = None,
    ) -> Account:
        emails = [
            {
                "email": f"{login}@users.noreply.github.com",
                "primary": False,
                "verified": True,
                "visibility": None,
            }
        ]
        if email:
            emails.insert(
                0, {"email": email, "primary": True, "verified": verified, "visibility": "public"}
            )
        account = Account(
            login=login, id=1000 + len(self.accounts), name=name, emails=emails, orgs=orgs or []
        )
        self.accounts[login] = account
        return account

    def _user(self) -> Account | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        login = self.tokens.get(token) if scheme.lower() in ("bearer", "token") else None
        return self.accounts.get(login) if login else None

    def app(self) -> QuartTrio:
        app = QuartTrio("github-standin")

        @app.get("/login/oauth/authorize")
        async def authorize() -> Response:
            args = request.args
            if args.get("client_id") != CLIENT_ID or args.get("redirect_uri") != self.redirect_uri:
                return Response("The redirect_uri is not associated with this application.", 400)
            back = {"state": args.get("state", "")}
            login = args.get("login_as", "")
            if args.get("deny"):
                back.update(
                    error="access_denied",
                    error_description="The user has denied your application access.",
                )
            elif login in self.accounts:
                code = secrets.token_hex(10)
                challenge = (
                    args.get("code_challenge")
                    if args.get("code_challenge_method") == "S256"
                    else None
                )
                self.codes[code] = Grant(login, self.redirect_uri, challenge)
                back["code"] = code
            else:
                return Response("choose a person with login_as=<login>", 400)
            return Response("", 302, {"Location": f"{self.redirect_uri}?{urlencode(back)}"})

        @app.post("/login/oauth/access_token")
        async def access_token() -> Response:
            form = (await request.form).to_dict()
            grant = self.codes.pop(form.get("code", ""), None)
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                answer = {"error": "incorrect_client_credentials"}
            elif grant is None or form.get("redirect_uri") != grant.redirect_uri:
                answer = {
                    "error": "bad_verification_code",
                    "error_description": "The code passed is incorrect or expired.",
                }
            elif grant.challenge and _s256(form.get("code_verifier", "")) != grant.challenge:
                answer = {"error": "invalid_grant", "error_description": "code_verifier mismatch"}
            else:
                token = "gho_" + secrets.token_hex(18)
                self.tokens[token] = grant.login
                answer = {"access_token": token, "token_type": "bearer", "scope": "user:email"}
            # Like GitHub: errors are 200s, and the format follows the Accept header.
            if "application/json" in request.headers.get("Accept", ""):
                return jsonify(answer)
            return Response(
                urlencode(answer), 200, content_type="application/x-www-form-urlencoded"
            )

        @app.get("/api/v3/user")
        async def user() -> Response:
            account = self._user()
            if failed := self._failure(account):
                return failed
            assert account is not None
            return jsonify(
                {
                    "login": account.login,
                    "id": account.id,
                    "name": account.name,
                    "type": "User",
                    "email": None,
                }
            )

        @app.get("/api/v3/user/emails")
        async def emails() -> Response:
            account = self._user()
            if failed := self._failure(account):
                return failed
            assert account is not None
            return jsonify(account.emails)

        @app.get("/api/v3/user/orgs")
        async def orgs() -> Response:
            account = self._user()
            if failed := self._failure(account):
                return failed
            assert account is not None
            per_page = min(int(request.args.get("per_page", "30")), self.page_size)
            page = int(request.args.get("page", "1"))
            chunk = account.orgs[(page - 1) * per_page : page * per_page]
            response = jsonify([{"login": o, "id": i} for i, o in enumerate(chunk)])
            if page * per_page < len(account.orgs):
                following = f"{self.api_url}/user/orgs?per_page={per_page}&page={page + 1}"
                response.headers["Link"] = f'<{following}>; rel="next"'
            return response

        return app

    def _failure(self, account: Account | None) -> Response | None:
        if self.api_status:
            return Response(
                '{"message": "Server Error"}', self.api_status, content_type="application/json"
            )
        if account is None:
            return Response('{"message": "Bad credentials"}', 401, content_type="application/json")
        return None

    async def serve(
        self,
        sock: socket.socket,
        shutdown: trio.Event,
        *,
        task_status: trio.TaskStatus[GitHub] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_app, self.app(), sock, shutdown))
            task_status.started(self)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def open_github(nursery: trio.Nursery, redirect_uri: str) -> GitHub:
    """Start the stand-in in `nursery`; it accepts only `redirect_uri` for the test client."""
    github = GitHub(redirect_uri=redirect_uri)
    started: GitHub = await nursery.start(partial(github.serve, loopback_socket(), trio.Event()))
    return started
