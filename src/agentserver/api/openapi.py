"""What /openapi.json says beyond routes and request bodies: every operation's answers.

quart-schema describes paths, path and query parameters and request bodies from the routes
and their pydantic models. This adds what a client (or a fuzzer) needs to judge an answer:
each operation's success status with the shape of its body, and the one error shape every
other answer has (`{"error": {"code", "message", "field"?}}`), as `default`. The shapes are
written once here as JSON Schema; tests/integration/test_openapi_fuzz.py holds the server to
them.
"""

from __future__ import annotations

from typing import Any

from quart_schema import OpenAPIProvider

from agentserver.auth.sessions import session_cookie_name

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}
COUNT: Schema = {"type": "integer", "minimum": 0}


def obj(**properties: Schema) -> Schema:
    """An object with exactly these (all required) properties."""
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": False,
    }


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


PREVIEW = obj(
    port={"type": "integer", "minimum": 1024, "maximum": 65535},
    public={"type": "boolean"},
    url=STRING,
    openUrl=STRING,
    changedBy=NULLABLE_STRING,
    changedAt=TIME,
)
ROLE: Schema = {"type": "string", "enum": ["owner", "maintainer", "developer", "guest"]}
ERROR: Schema = obj(
    error={
        "type": "object",
        "properties": {"code": STRING, "message": {"type": "string", "minLength": 1}},
        "required": ["code", "message"],
    }
)
USER = obj(id=STRING, username=STRING, email=NULLABLE_STRING, role=STRING, createdAt=TIME)
SIGNED_IN = obj(user=USER)
SECONDS: Schema = {"type": "number", "minimum": 0}
WORKSPACE = obj(
    id=STRING,
    name=STRING,
    role=ROLE,
    createdAt=TIME,
    updatedAt=TIME,
    idleTimeoutSeconds={"type": ["integer", "null"], "minimum": 0},
    defaultIdleTimeoutSeconds=SECONDS,
    maxIdleTimeoutSeconds=SECONDS,
    membersManageAllSandboxes={"type": "boolean"},
)
MEMBER = obj(userId=STRING, username=STRING, email=NULLABLE_STRING, role=ROLE, createdAt=TIME)
SANDBOX = obj(
    id=STRING,
    name=STRING,
    type={"type": "string", "enum": ["opencode", "openclaw", "local"]},
    status={
        "type": "string",
        "enum": ["creating", "running", "pausing", "paused", "resuming", "offline", "failed"],
    },
    statusReason=NULLABLE_STRING,
    workspaceId=STRING,
    createdBy=NULLABLE_STRING,
    createdAt=TIME,
    updatedAt=TIME,
    lastActivityAt=TIME,
    pausedAt=TIME,
    url={"type": "string", "format": "uri"},
    pausedReason={"type": ["string", "null"], "enum": ["idle", "user", None]},
    pausedBy=NULLABLE_STRING,
    pausedIdleSeconds={"type": ["number", "null"]},
    private={"type": "boolean"},
    lastSeenAt=TIME,
    # The workspace's shared disk inside the sandbox (null for a local sandbox).
    diskPath=NULLABLE_STRING,
)
# Someone else's private sandbox, to a member who may not open it: that it exists, no more.
WITHHELD_SANDBOX = obj(
    **{
        name: SANDBOX["properties"][name]
        for name in ("id", "name", "type", "status", "workspaceId", "createdBy")
    },
    createdAt=TIME,
    updatedAt=TIME,
    private={"const": True},
)
LISTED_SANDBOX: Schema = {"anyOf": [SANDBOX, WITHHELD_SANDBOX]}
COUNTS: dict[str, Schema] = {
    name: COUNT
    for name in (
        "requests",
        "errors",
        "inputTokens",
        "outputTokens",
        "cacheCreationInputTokens",
        "cacheReadInputTokens",
        "totalTokens",
    )
}
LIMITS = obj(rpm=COUNT, tokensPerDay=COUNT)
QUOTA = obj(
    rpm=nullable(COUNT),
    tokensPerDay=nullable(COUNT),
    default=LIMITS,
    effective=LIMITS,
    updatedAt=TIME,
)
USAGE = obj(
    **{"from": TIME, "to": TIME},
    totals=obj(**COUNTS),
    byDay=array(obj(day=STRING, **COUNTS)),
    bySandbox=array(obj(sandboxId=NULLABLE_STRING, sandboxName=NULLABLE_STRING, **COUNTS)),
    byModel=array(obj(model=NULLABLE_STRING, **COUNTS)),
    refused=array(
        obj(sandboxId=STRING, sandboxName=STRING, reason=STRING, count=COUNT, lastAt=TIME)
    ),
    limits=LIMITS,
)
AUDIT_ENTRY = obj(
    id=STRING,
    at=TIME,
    actor=obj(
        kind={"type": "string", "enum": ["user", "token", "agent", "system"]},
        id=NULLABLE_STRING,
        name=NULLABLE_STRING,
        userId=NULLABLE_STRING,
    ),
    action=STRING,
    target=obj(kind=NULLABLE_STRING, id=NULLABLE_STRING, name=NULLABLE_STRING),
    workspaceId=NULLABLE_STRING,
    clientAddress=NULLABLE_STRING,
    result={"type": "string", "enum": ["ok", "refused", "failed"]},
    reason=NULLABLE_STRING,
    details={"type": "object"},
)
AUDIT_PAGE = obj(entries=array(AUDIT_ENTRY), nextCursor=NULLABLE_STRING)
PROVIDER = obj(id=STRING, name=STRING, loginUrl=STRING)
AUTH_CONFIG = obj(
    registrationOpen={"type": "boolean"},
    setupNeeded={"type": "boolean"},
    providers=array(PROVIDER),
    user=nullable(USER),
    baseDomain=STRING,
    warnings=array(STRING),
    sandboxTypes=array({"type": "string", "enum": ["opencode", "openclaw"]}),
)
ADMIN_WORKSPACE = obj(id=STRING, name=STRING, createdAt=TIME, sandboxCount=COUNT, memberCount=COUNT)
STATUS_OK = obj(status={"const": "ok"})
SESSION = obj(
    id=STRING,
    createdAt=TIME,
    lastUsedAt=TIME,
    expiresAt=TIME,
    clientAddress=NULLABLE_STRING,
    userAgent=NULLABLE_STRING,
    current={"type": "boolean"},
)
ADMIN_USER = obj(
    id=STRING,
    username=STRING,
    email=NULLABLE_STRING,
    role=STRING,
    createdAt=TIME,
    disabled={"type": "boolean"},
    disabledAt=TIME,
)
ADMIN_SANDBOX = obj(
    id=STRING,
    name=STRING,
    type=SANDBOX["properties"]["type"],
    status=SANDBOX["properties"]["status"],
    statusReason=NULLABLE_STRING,
    workspaceId=STRING,
    workspaceName=STRING,
    createdBy=NULLABLE_STRING,
    creator=NULLABLE_STRING,
    createdAt=TIME,
    lastActivityAt=TIME,
)

API_TOKEN = obj(
    id=STRING,
    name=STRING,
    scope={"type": "string", "enum": ["read", "full"]},
    workspaceId=NULLABLE_STRING,
    userId=STRING,
    username=STRING,
    createdAt=TIME,
    lastUsedAt=TIME,
    expiresAt=TIME,
    revokedAt=TIME,
    state={"type": "string", "enum": ["active", "expired", "revoked"]},
)
NEW_API_TOKEN = obj(**API_TOKEN["properties"], token={"type": "string", "pattern": "^ast_"})
CLI_LOGIN = obj(
    request=STRING,
    code=STRING,
    approveUrl=STRING,
    expiresIn=COUNT,
    interval=COUNT,
)
PENDING_CLI_LOGIN = obj(
    name=STRING,
    scope=API_TOKEN["properties"]["scope"],
    workspaceId=NULLABLE_STRING,
    workspaceName=NULLABLE_STRING,
    expiresInDays=SECONDS,
    expiresAt=TIME,
)


def json_answer(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def no_content(description: str) -> dict[str, Any]:
    return {"description": description}


def redirect(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"Location": {"schema": STRING, "required": True}},
    }


def typed(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": STRING}}}


# (method, path) → its success answers by status. Anything else answers `default` (ERROR).
ANSWERS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("POST", "/api/auth/register"): {"201": json_answer(SIGNED_IN, "registered and signed in")},
    ("POST", "/api/auth/login"): {"200": json_answer(SIGNED_IN, "signed in")},
    ("POST", "/api/auth/logout"): {"200": json_answer(STATUS_OK, "signed out")},
    ("POST", "/api/auth/logout-all"): {"200": json_answer(STATUS_OK, "every session ended")},
    ("POST", "/api/auth/password"): {"200": json_answer(STATUS_OK, "password changed")},
    ("GET", "/api/auth/sessions"): {"200": json_answer(array(SESSION), "the caller's sessions")},
    ("DELETE", "/api/auth/sessions/{session_id}"): {"204": no_content("that session ended")},
    ("GET", "/api/auth/me"): {"200": json_answer(USER, "the signed-in user")},
    ("GET", "/api/auth/config"): {"200": json_answer(AUTH_CONFIG, "what sign-in offers")},
    ("GET", "/api/auth/providers"): {"200": json_answer(array(PROVIDER), "SSO providers")},
    ("GET", "/api/auth/oidc/{provider_id}"): {"302": redirect("to the provider")},
    ("GET", "/api/auth/oidc/{provider_id}/callback"): {"302": redirect("signed in: to the app")},
    ("GET", "/api/workspaces"): {"200": json_answer(array(WORKSPACE), "the caller's")},
    ("POST", "/api/workspaces"): {"201": json_answer(WORKSPACE, "created")},
    ("GET", "/api/workspaces/{workspace_id}"): {"200": json_answer(WORKSPACE, "the workspace")},
    ("PATCH", "/api/workspaces/{workspace_id}"): {
        "200": json_answer(WORKSPACE, "renamed and/or its settings changed")
    },
    ("DELETE", "/api/workspaces/{workspace_id}"): {"204": no_content("deleted")},
    ("GET", "/api/workspaces/{workspace_id}/members"): {
        "200": json_answer(array(MEMBER), "its members")
    },
    ("POST", "/api/workspaces/{workspace_id}/members"): {"201": json_answer(MEMBER, "added")},
    ("PUT", "/api/workspaces/{workspace_id}/members/{user_id}"): {
        "200": json_answer(MEMBER, "role changed")
    },
    ("DELETE", "/api/workspaces/{workspace_id}/members/{user_id}"): {"204": no_content("removed")},
    ("GET", "/api/workspaces/{workspace_id}/sandboxes"): {
        "200": json_answer(array(LISTED_SANDBOX), "its sandboxes (others' private ones withheld)")
    },
    ("POST", "/api/workspaces/{workspace_id}/sandboxes"): {
        "201": json_answer(SANDBOX, "created, starting in the background")
    },
    ("GET", "/api/workspaces/{workspace_id}/events"): {
        "200": typed("text/event-stream", "sandbox changes as server-sent events")
    },
    ("GET", "/api/workspaces/{workspace_id}/usage"): {"200": json_answer(USAGE, "LLM usage")},
    ("POST", "/api/workspaces/{workspace_id}/agent-code"): {
        "201": json_answer(obj(code=STRING, expiresAt=TIME), "a one-time registration code")
    },
    ("GET", "/api/agent/install"): {
        "200": json_answer(
            obj(version=STRING, tunnelProtocol=COUNT, download=NULLABLE_STRING),
            "how to install the local agent",
        )
    },
    ("GET", "/download/agentserver-agent.pyz"): {
        "200": typed("application/zip", "the local agent as one file, for Python 3.11+"),
        "304": {"description": "not modified (If-None-Match matched the ETag)"},
    },
    ("POST", "/api/agent/register"): {
        "201": json_answer(
            obj(sandboxId=STRING, tunnelToken=STRING, workspaceId=STRING), "registered"
        )
    },
    ("GET", "/api/sandboxes/{sandbox_id}"): {
        "200": json_answer(LISTED_SANDBOX, "the sandbox (withheld if someone else's private one)")
    },
    ("PATCH", "/api/sandboxes/{sandbox_id}"): {
        "200": json_answer(SANDBOX, "renamed and/or made private or not")
    },
    ("DELETE", "/api/sandboxes/{sandbox_id}"): {"204": no_content("deleted with its files")},
    ("POST", "/api/sandboxes/{sandbox_id}/pause"): {"200": json_answer(SANDBOX, "pausing")},
    ("POST", "/api/sandboxes/{sandbox_id}/resume"): {"200": json_answer(SANDBOX, "resuming")},
    ("POST", "/api/sandboxes/{sandbox_id}/restart"): {
        "200": json_answer(SANDBOX, "resuming: its agent is stopped and started again")
    },
    ("GET", "/api/sandboxes/{sandbox_id}/setup"): {
        "200": json_answer(
            obj(envNames=array(STRING), gitUrl=NULLABLE_STRING, gitRef=NULLABLE_STRING),
            "its environment variables' names (never their values) and its git repository",
        )
    },
    ("GET", "/api/sandboxes/{sandbox_id}/logs"): {
        "200": json_answer(obj(logs=STRING), "the tail of the agent's output")
    },
    ("GET", "/api/sandboxes/{sandbox_id}/open"): {
        "302": redirect("to the sandbox's own host, with a one-time ticket")
    },
    ("GET", "/api/sandboxes/{sandbox_id}/previews"): {
        "200": json_answer(
            obj(available={"type": "boolean"}, previews=array(PREVIEW)),
            "the ports it serves (where its backend can tell; a local agent's shared ports) "
            "and every public one; `available` false where its backend cannot reach its ports",
        )
    },
    ("PUT", "/api/sandboxes/{sandbox_id}/previews/{port}/public"): {
        "200": json_answer(PREVIEW, "anyone may open it, until made private or paused")
    },
    ("DELETE", "/api/sandboxes/{sandbox_id}/previews/{port}/public"): {
        "200": json_answer(PREVIEW, "only members may open it again")
    },
    ("POST", "/api/sandboxes/{sandbox_id}/launch"): {
        "200": json_answer(
            obj(url=STRING, expiresAt=TIME),
            "a link to /open that works once, in a browser signed in as the caller",
        )
    },
    ("GET", "/api/tokens"): {"200": json_answer(array(API_TOKEN), "the caller's API tokens")},
    ("POST", "/api/tokens"): {
        "201": json_answer(NEW_API_TOKEN, "created; `token` is shown this once")
    },
    ("DELETE", "/api/tokens/{token_id}"): {"204": no_content("revoked")},
    ("GET", "/api/admin/tokens"): {"200": json_answer(array(API_TOKEN), "every user's tokens")},
    ("DELETE", "/api/admin/tokens/{token_id}"): {"204": no_content("revoked")},
    ("POST", "/api/cli-login"): {
        "201": json_answer(CLI_LOGIN, "waiting for approval at `approveUrl`; poll with `request`")
    },
    ("GET", "/api/cli-login/pending"): {
        "200": json_answer(PENDING_CLI_LOGIN, "what the sign-in waiting under `?code=` asks for")
    },
    ("POST", "/api/cli-login/approve"): {
        "200": json_answer(
            {"type": "object", "properties": {"status": {"enum": ["approved", "denied"]}}},
            "approved (the next poll receives the token) or denied",
        )
    },
    ("POST", "/api/cli-login/poll"): {
        "200": json_answer(NEW_API_TOKEN, "approved: the new token, this once"),
        "202": json_answer(obj(status={"const": "pending"}), "still waiting for approval"),
    },
    ("GET", "/api/admin/users"): {"200": json_answer(array(ADMIN_USER), "every user")},
    ("PUT", "/api/admin/users/{user_id}/role"): {"200": json_answer(USER, "role changed")},
    ("POST", "/api/admin/users/{user_id}/disable"): {
        "200": json_answer(ADMIN_USER, "disabled; every session of theirs ended")
    },
    ("POST", "/api/admin/users/{user_id}/enable"): {
        "200": json_answer(ADMIN_USER, "may sign in again")
    },
    ("POST", "/api/admin/users/{user_id}/password"): {
        "200": json_answer(
            obj(password=NULLABLE_STRING),
            "password set, every session of theirs ended; `password` is the one the server "
            "made up (shown once), or null when the admin gave one",
        )
    },
    ("GET", "/api/admin/sandboxes"): {
        "200": json_answer(array(ADMIN_SANDBOX), "every sandbox on the server")
    },
    ("GET", "/api/admin/workspaces"): {
        "200": json_answer(array(ADMIN_WORKSPACE), "every workspace")
    },
    ("GET", "/api/admin/workspaces/{workspace_id}/quota"): {
        "200": json_answer(QUOTA, "its LLM limits")
    },
    ("PUT", "/api/admin/workspaces/{workspace_id}/quota"): {
        "200": json_answer(QUOTA, "its LLM limits, changed")
    },
    ("DELETE", "/api/admin/workspaces/{workspace_id}/quota"): {
        "204": no_content("server defaults apply again")
    },
    ("GET", "/api/workspaces/{workspace_id}/audit"): {
        "200": json_answer(
            AUDIT_PAGE, "its audit entries, newest first, and the next page's cursor"
        )
    },
    ("GET", "/api/admin/audit"): {
        "200": json_answer(
            AUDIT_PAGE, "every audit entry, newest first, and the next page's cursor"
        )
    },
    ("GET", "/api/admin/audit/export"): {
        "200": typed(
            "application/x-ndjson", "the matching entries, oldest first, one JSON per line"
        )
    },
    ("GET", "/healthz"): {"200": json_answer(STATUS_OK, "the process is alive")},
    ("GET", "/readyz"): {
        "200": json_answer(obj(status={"const": "ok"}, database={"const": True}), "ready"),
        "503": json_answer(
            obj(status={"enum": ["unavailable", "draining"]}, database={"type": "boolean"}),
            "database down, or this replica is draining (shutting down)",
        ),
    },
    ("GET", "/metrics"): {"200": typed("text/plain", "Prometheus text exposition")},
    ("GET", "/"): {"200": typed("text/html", "the web app")},
    ("GET", "/{path}"): {"200": typed("*/*", "a web app file, or the app for its routes")},
}
# Sign-in with an SSO provider answers a browser with a page, an API client with JSON.
HTML_ERRORS = {"/api/auth/oidc/{provider_id}", "/api/auth/oidc/{provider_id}/callback"}


def error_answer(path: str) -> dict[str, Any]:
    answer = json_answer(ERROR, "an error: its code, a message, and the field at fault if any")
    if path in HTML_ERRORS:
        answer["content"]["text/html"] = {"schema": STRING}
    return answer


class DescribedOpenAPI(OpenAPIProvider):
    """quart-schema's document plus every operation's answers and the cookie that signs in."""

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                answers = dict(ANSWERS.get((method.upper(), path), {}))
                answers.update(operation.get("responses") or {})
                answers["default"] = error_answer(path)
                operation["responses"] = answers
        components = document.setdefault("components", {})
        components.setdefault("securitySchemes", {})["session"] = {
            "type": "apiKey",
            "in": "cookie",
            "name": session_cookie_name(False),
            "description": f"set by register or login (named {session_cookie_name(True)} "
            "with https); mutations carrying it must come from the same origin",
        }
        components["securitySchemes"]["token"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "a personal API token (`ast_…`, from POST /api/tokens or "
            "`agentserver login`): its owner's role, capped by its scope (read: GET only) and "
            "workspace; never for passwords, sessions or tokens",
        }
        document["security"] = [{"session": []}, {"token": []}, {}]
        return document
