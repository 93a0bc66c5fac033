"""What `serve` tells its operator once it listens: where, what runs, what is missing (pure)."""

from __future__ import annotations

from agentserver.settings import Settings

_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def startup_lines(settings: Settings, url: str, sandboxes: str) -> list[str]:
    """The lines printed once the server is ready; `sandboxes` says what runs them and how."""
    data = (
        "external PostgreSQL (--db-url)"
        if settings.db_url
        else f"embedded PostgreSQL in {settings.data_dir}"
    )
    lines = [
        f"agentserver listening on {url}",
        f"  data:          {data}; sandbox homes and disks in {settings.data_dir}",
        f"  sandboxes:     {sandboxes}",
        f"  sandbox URLs:  {settings.base_scheme}://oc-{{id}}.{settings.domain}",
        f"  Anthropic:     {_anthropic(settings)}",
    ]
    return lines + [f"warning: {w}" for w in warnings(settings)]


def _anthropic(settings: Settings) -> str:
    if settings.anthropic_api_key:
        return f"API key configured, calls go to {settings.anthropic_base_url}"
    if settings.anthropic_auth_token:
        return f"bearer token configured, calls go to {settings.anthropic_base_url}"
    return "no credentials: " + NO_CREDENTIALS


NO_CREDENTIALS = (
    "prompts in sandboxes will fail until ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN is set"
    " (or their _FILE variants)"
)


def missing_credentials(settings: Settings) -> str | None:
    """What an admin should be told when the LLM proxy has nothing to call Anthropic with."""
    if settings.anthropic_api_key or settings.anthropic_auth_token:
        return None
    return "This server has no Anthropic credentials: " + NO_CREDENTIALS + "."


def warnings(settings: Settings) -> list[str]:
    """What an operator should fix: settings that work here but not for a team."""
    found = []
    listens_widely = settings.listen_host not in _LOOPBACK_HOSTS
    if listens_widely and settings.domain.split(":")[0] == "localhost":
        found.append(
            f"other machines can connect ({settings.listen_host}:{settings.listen_port}), but"
            f" the base domain is {settings.domain}: a teammate who opens a sandbox is sent to"
            f" oc-….{settings.domain}, which is their own machine. Set --base-domain to a name"
            " with a wildcard DNS record (README: Serve your team)."
        )
    return found
