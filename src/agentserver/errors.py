"""The error hierarchy: every failure the API can answer with, and its HTTP status."""

from __future__ import annotations


class AgentServerError(Exception):
    """Base of every error we raise on purpose; carries an API code and an HTTP status."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Invalid(AgentServerError):
    """The request is malformed or a field has a bad value (400)."""

    status = 400
    code = "invalid"


class Unauthenticated(AgentServerError):
    """No valid credentials were presented (401)."""

    status = 401
    code = "unauthenticated"


class Forbidden(AgentServerError):
    """The caller is known but may not do this (403)."""

    status = 403
    code = "forbidden"


class NotFound(AgentServerError):
    """The thing does not exist, or the caller may not know it exists (404)."""

    status = 404
    code = "not_found"


class Conflict(AgentServerError):
    """The request clashes with the current state (409)."""

    status = 409
    code = "conflict"


class TooLarge(AgentServerError):
    """The request body is larger than the configured limit (413)."""

    status = 413
    code = "too_large"


class UpgradeRequired(AgentServerError):
    """The client speaks a protocol version this server does not (426)."""

    status = 426
    code = "upgrade_required"


class RateLimited(AgentServerError):
    """Too many requests; try again after `retry_after` seconds (429)."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class Unavailable(AgentServerError):
    """A dependency (database, backend, sandbox) cannot be reached (503)."""

    status = 503
    code = "unavailable"


class DatabaseUnavailable(Unavailable):
    """PostgreSQL does not answer."""

    code = "database_unavailable"


class SandboxUnreachable(AgentServerError):
    """The sandbox's agent did not answer the proxy (502)."""

    status = 502
    code = "sandbox_unreachable"


class BackendError(AgentServerError):
    """A sandbox backend operation failed; the message is shown to users as the reason."""

    status = 502
    code = "backend_error"


class MigrationFailed(AgentServerError):
    """A migration file failed to apply; it was rolled back and names the file."""

    status = 500
    code = "migration_failed"


class ConfigError(AgentServerError):
    """A setting has a bad value; the message names the flag or variable."""

    status = 500
    code = "config"
