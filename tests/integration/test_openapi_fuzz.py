"""Schemathesis over /openapi.json: signed in, every operation, valid and invalid input; no 5xx,
no answer off the schema."""

from __future__ import annotations

import http.cookiejar
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import schemathesis
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agentserver.auth.sessions import session_cookie_name
from tests.conftest import make_settings, start_server
from tests.support.accounts import owner_of_workspace

# Examples per operation and mode: enough to reach every parameter and body field, few enough that
# the whole run stays well under two minutes on CI's two cores. Derandomized: the same cases
# every run, so a failure here reproduces.
MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Server-sent events never end: only ever called with ids that do not exist (a quick 404).
ENDLESS = {("GET", "/api/workspaces/{workspace_id}/events")}
# Signing out ends the session the other cases use: it runs last.
LAST = {("POST", "/api/auth/logout")}


def order(operation: Any) -> tuple[int, str, str]:
    """Reads and writes first, then deletions, then sign-out."""
    key = (operation.method.upper(), operation.path)
    rank = 2 if key in LAST else 1 if operation.method.upper() == "DELETE" else 0
    return rank, operation.path, operation.method


def fuzz(spec: dict[str, Any], base_url: str, cookie: str, real: dict[str, str]) -> list[str]:
    """Run every operation's cases against the server; every failed check, one line each."""
    schema = schemathesis.openapi.from_dict(spec)
    session = requests.Session()
    # The signed-in cookie goes in a header; answers that set cookies (register, login) must
    # not switch this session to another user.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    session.headers.update({"Origin": base_url, "Cookie": cookie})
    failures: list[str] = []
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=order)
    assert len(operations) >= 40, [op.label for op in operations]
    for operation in operations:
        endless = (operation.method.upper(), operation.path) in ENDLESS
        for mode in modes_of(operation):
            run = cases_of(operation, mode, base_url, session, real, endless, failures)
            try:
                run()
            except Unsatisfiable:  # every part it has accepts anything (e.g. a free string)
                assert mode == GenerationMode.NEGATIVE, operation.label
    return failures


def modes_of(operation: Any) -> tuple[GenerationMode, ...]:
    """Valid input always; input the description forbids where it takes any input at all."""
    parts = (operation.path_parameters, operation.query, operation.headers, operation.cookies)
    if any(len(part) for part in parts) or len(operation.body):
        return (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    return (GenerationMode.POSITIVE,)


def cases_of(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    session: requests.Session,
    real: dict[str, str],
    endless: bool,
    failures: list[str],
) -> Callable[[], None]:
    """A Hypothesis test running `operation`'s cases (valid ones, or ones the description
    forbids); half of them on the ids that exist."""

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: every failure is kept as is
        suppress_health_check=list(HealthCheck),
    )
    @given(st.tuples(operation.as_strategy(generation_mode=mode), st.booleans()))
    def run(pair: tuple[Any, bool]) -> None:
        case, use_real = pair
        if use_real and not endless and case.path_parameters:
            for name in case.path_parameters:
                if name in real:
                    case.path_parameters[name] = real[name]
        response = case.call(base_url=base_url, session=session, allow_redirects=False, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS)
        except AssertionError as exc:  # schemathesis' failure group is an AssertionError
            text = " ".join(str(exc).split())[:600]
            failures.append(f"{operation.label} → {response.status_code}: {text}")

    return run


async def test_schemathesis_finds_no_5xx_and_no_answer_off_the_schema(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """Every operation of /openapi.json, called signed in (as the admin who owns a workspace
    with a sandbox) with generated parameters and bodies, valid or not, answers neither 5xx
    nor anything its description does not allow (status, content type, headers, body shape)."""
    # A sandbox's agent that cannot start: creating one is quick and leaves nothing running.
    server = await start_server(
        nursery, make_settings(db_url, tmp_path / "data", opencode_bin="/nonexistent/opencode")
    )
    async with server.client() as client:
        user, workspace = await owner_of_workspace(client, "fuzzer")
        sandbox = await client.post(
            f"/api/workspaces/{workspace['id']}/sandboxes", json={"name": "s"}
        )
        assert sandbox.status_code == 201, sandbox.text
        spec = (await client.get("/openapi.json")).json()
        name = session_cookie_name(False)
        cookie = f"{name}={client.cookies[name]}"
    real = {
        "workspace_id": workspace["id"],
        "sandbox_id": sandbox.json()["id"],
        "user_id": user["id"],
    }
    failures = await trio.to_thread.run_sync(fuzz, spec, server.url, cookie, real)
    assert failures == [], "\n".join(failures)
    server.shutdown.set()
