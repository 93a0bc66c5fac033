"""Server settings: one frozen dataclass built from flags and environment, validated (pure)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agentserver.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Option:
    """One `serve` option: its flag, environment variable, default (as text) and help."""

    name: str
    env: str
    default: str | None
    help: str
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option(
        "listen",
        "AGENTSERVER_LISTEN",
        "127.0.0.1:8080",
        "Address to listen on, HOST:PORT (port 0 picks a free one).",
    ),
    Option(
        "db_url",
        "DATABASE_URL",
        None,
        "PostgreSQL URL; when empty an embedded PostgreSQL runs in the data directory.",
        secret=True,
    ),
    Option(
        "data_dir",
        "AGENTSERVER_DATA_DIR",
        None,
        "Where the embedded database, sandbox homes and workspace disks live"
        " (default: the user data directory; /var/lib/agentserver as root).",
    ),
    Option(
        "base_domain",
        "BASE_DOMAIN",
        None,
        "Domain under which sandboxes get subdomains, oc-{id}.{domain}"
        " (default: localhost:{port}).",
    ),
    Option(
        "base_scheme",
        "BASE_SCHEME",
        "http",
        "URL scheme of generated URLs: http or https (https also marks cookies Secure).",
    ),
    Option(
        "backend",
        "AGENTSERVER_BACKEND",
        "process",
        "Sandbox backend: process, docker or kubernetes.",
    ),
    Option(
        "idle_timeout",
        "IDLE_TIMEOUT",
        "30m",
        "Pause sandboxes idle this long (e.g. 90s, 30m, 2h); 0 disables.",
    ),
    Option(
        "proxy_timeout",
        "AGENTSERVER_PROXY_TIMEOUT",
        "60s",
        "How long the subdomain proxy waits for a sandbox's response headers (504 after);"
        " a running response or stream is never cut.",
    ),
    Option(
        "allow_registration",
        "AGENTSERVER_ALLOW_REGISTRATION",
        "true",
        "Let anyone register a password account (the first user always may).",
    ),
    Option(
        "opencode_bin", "OPENCODE_BIN", "opencode", "The opencode binary the process backend runs."
    ),
    Option(
        "openclaw_bin",
        "OPENCLAW_BIN",
        None,
        "The OpenClaw binary the process backend runs for openclaw sandboxes"
        " (unset: type unavailable).",
    ),
    Option(
        "sandbox_user",
        "AGENTSERVER_SANDBOX_USER",
        "agentserver-sandbox",
        "System user the process backend checks bubblewrap as when the server runs as root (the"
        " default is created if missing); each sandbox then runs as a uid of its own.",
    ),
    Option(
        "agent_image",
        "AGENT_IMAGE",
        "agentserver-agent:latest",
        "Container image for opencode sandboxes (docker, kubernetes).",
    ),
    Option(
        "openclaw_image",
        "OPENCLAW_IMAGE",
        None,
        "Container image for OpenClaw sandboxes (docker, kubernetes).",
    ),
    Option(
        "docker_network",
        "AGENT_NETWORK",
        "agentserver",
        "User-defined Docker network the sandboxes join.",
    ),
    Option(
        "agent_memory_limit",
        "AGENT_MEMORY_LIMIT",
        "2147483648",
        "Memory limit per sandbox, in bytes: its container's (Docker), or its cgroup's (process"
        " backend, where the server can create cgroups).",
    ),
    Option(
        "agent_nano_cpus",
        "AGENT_NANO_CPUS",
        "2000000000",
        "CPU limit per sandbox, in billionths of a CPU: its container's (Docker), or its"
        " cgroup's CPU quota (process backend, where the server can create cgroups; its"
        " sandboxes also run at a lower priority).",
    ),
    Option(
        "agent_pids_limit",
        "AGENT_PIDS_LIMIT",
        "256",
        "Process (and thread) limit per sandbox: its container's (Docker), or its cgroup's"
        " pids.max and, on a root server, RLIMIT_NPROC of its own uid (process backend);"
        " 0 means none.",
    ),
    Option(
        "anthropic_api_key",
        "ANTHROPIC_API_KEY",
        None,
        "Anthropic API key the LLM proxy injects (never given to sandboxes).",
        secret=True,
    ),
    Option(
        "anthropic_auth_token",
        "ANTHROPIC_AUTH_TOKEN",
        None,
        "Anthropic bearer token, an alternative to the API key.",
        secret=True,
    ),
    Option(
        "anthropic_base_url",
        "ANTHROPIC_BASE_URL",
        "https://api.anthropic.com",
        "Upstream Anthropic API base URL (a path in it is kept).",
    ),
    Option(
        "anthropic_proxy_url",
        "ANTHROPIC_PROXY_URL",
        None,
        "URL sandboxes use to reach the LLM proxy (default: {scheme}://{listen}/proxy/anthropic).",
    ),
    Option(
        "llm_rpm",
        "AGENTSERVER_LLM_RPM",
        "0",
        "LLM requests per minute per workspace; 0 = unlimited.",
    ),
    Option(
        "llm_tokens_per_day",
        "AGENTSERVER_LLM_TOKENS_PER_DAY",
        "0",
        "LLM tokens per day per workspace; 0 = unlimited.",
    ),
    Option(
        "llm_models",
        "AGENTSERVER_LLM_MODELS",
        None,
        "Comma-separated model allow-list for the LLM proxy (empty: all).",
    ),
    Option(
        "llm_max_body",
        "AGENTSERVER_LLM_MAX_BODY",
        "32MiB",
        "Largest request body the LLM proxy accepts.",
    ),
    Option("max_body", "AGENTSERVER_MAX_BODY", "1MiB", "Largest JSON body the API accepts."),
    Option(
        "oidc_redirect_base_url",
        "OIDC_REDIRECT_BASE_URL",
        None,
        "External URL of this server for OAuth/OIDC callbacks.",
    ),
    Option("github_client_id", "GITHUB_CLIENT_ID", None, "GitHub OAuth app client id."),
    Option(
        "github_client_secret",
        "GITHUB_CLIENT_SECRET",
        None,
        "GitHub OAuth app client secret.",
        secret=True,
    ),
    Option(
        "github_allowed_orgs",
        "GITHUB_ALLOWED_ORGS",
        None,
        "Comma-separated GitHub organisations allowed to sign in (empty: any).",
    ),
    Option(
        "oidc_issuer_url",
        "OIDC_ISSUER_URL",
        None,
        "Generic OIDC issuer URL (discovery at /.well-known/openid-configuration).",
    ),
    Option("oidc_client_id", "OIDC_CLIENT_ID", None, "Generic OIDC client id."),
    Option(
        "oidc_client_secret", "OIDC_CLIENT_SECRET", None, "Generic OIDC client secret.", secret=True
    ),
    Option(
        "oidc_allowed_domains",
        "OIDC_ALLOWED_DOMAINS",
        None,
        "Comma-separated email domains allowed to sign in via SSO (exact match; empty: any).",
    ),
    Option(
        "oidc_link_by_email",
        "OIDC_LINK_BY_EMAIL",
        "true",
        "Link a new SSO identity to an existing account with the same email when a provider"
        " verified it for both (never an address typed in at registration).",
    ),
    Option(
        "github_api_url",
        "GITHUB_API_URL",
        "https://api.github.com",
        "GitHub REST API base URL (for GitHub Enterprise).",
    ),
    Option(
        "github_oauth_url",
        "GITHUB_OAUTH_URL",
        "https://github.com",
        "GitHub OAuth base URL (for GitHub Enterprise).",
    ),
    Option(
        "kube_namespace_prefix",
        "SANDBOX_NAMESPACE_PREFIX",
        "agent-ws",
        "Kubernetes namespace prefix, one namespace per workspace.",
    ),
    Option(
        "runtime_class",
        "RUNTIME_CLASS",
        None,
        "Kubernetes runtimeClassName for sandbox pods (e.g. gvisor).",
    ),
    Option(
        "trusted_proxies",
        "AGENTSERVER_TRUSTED_PROXIES",
        None,
        "Comma-separated addresses or CIDRs of reverse proxies whose X-Forwarded-For or"
        " Forwarded header names the real client (throttles key on it); empty: trust none.",
    ),
    Option(
        "proxy_body_timeout",
        "AGENTSERVER_PROXY_BODY_TIMEOUT",
        "30s",
        "How long the subdomain proxy waits for the next bytes of a request body before it"
        " answers 408 and closes the connection.",
    ),
    Option(
        "allow_unisolated_sandboxes",
        "AGENTSERVER_ALLOW_UNISOLATED_SANDBOXES",
        "false",
        "Let the process backend start sandboxes where bubblewrap does not work; they can then"
        " see the server's command line and reach other sandboxes' ports (the web UI says so).",
    ),
    Option(
        "agent_file_size_limit",
        "AGENT_FILE_SIZE_LIMIT",
        "8GiB",
        "Largest file a process sandbox may write (RLIMIT_FSIZE; not a quota on the whole"
        " disk); 0 means no limit.",
    ),
    Option(
        "reconcile_interval",
        "AGENTSERVER_RECONCILE_INTERVAL",
        "60s",
        "How often sandbox rows and the backend are made to agree again (a status write lost"
        " while the database was down, an exit missed); 0 reconciles only at start.",
    ),
    Option(
        "tunnel_max_streams",
        "AGENTSERVER_TUNNEL_MAX_STREAMS",
        "100",
        "Requests open at once through one local agent's tunnel (at most what the agent"
        " announces, 100 for ours); more are answered 503 until one finishes.",
    ),
    Option(
        "tunnel_receive_budget",
        "AGENTSERVER_TUNNEL_RECEIVE_BUDGET",
        "16MiB",
        "Bytes one local agent may send ahead, all its streams together, before browsers read"
        " them (a stream gets up to 2 MiB while the budget lasts, 128 KiB beyond it).",
    ),
    Option(
        "tunnel_send_timeout",
        "AGENTSERVER_TUNNEL_SEND_TIMEOUT",
        "60s",
        "How long an upload to a local agent may wait for the agent to take more before its"
        " request is reset and the browser gets an error.",
    ),
    Option(
        "max_connections",
        "AGENTSERVER_MAX_CONNECTIONS",
        None,
        "Most client connections open at once; at the cap the one idle longest is closed, or"
        " with none idle the newcomer gets a 503 (default: half the open-files limit less 128).",
    ),
    Option(
        "keep_alive_timeout",
        "AGENTSERVER_KEEP_ALIVE_TIMEOUT",
        "30s",
        "How long a client connection may wait for its next request, whose head must have"
        " arrived whole by then; the connection is closed after.",
    ),
    Option(
        "metrics_token",
        "AGENTSERVER_METRICS_TOKEN",
        None,
        "When set, GET /metrics requires `Authorization: Bearer <token>` (401 otherwise).",
        secret=True,
    ),
)

OPTION_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}

BACKENDS = ("process", "docker", "kubernetes")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"^(\d+)\s*(b|kib|mib|gib|kb|mb|gb|k|m|g)?$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 1000**2,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 1000**3,
}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# POSIX-portable user names (what useradd accepts by default), at most 32 characters.
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}\$?")
MAX_SECRET_FILE = 64 << 10
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as `90s`, `30m`, `1h30m` or a bare number of seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 30m, 1h30m, 0)")
    return total


def positive_duration(text: str | None) -> float:
    seconds = parse_duration(text or "")
    if seconds <= 0:
        raise ValueError("must be longer than 0 (examples: 30s, 2m)")
    return seconds


def parse_size(text: str) -> int:
    """Bytes in a size such as `32MiB`, `1048576` or `10k`."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 1048576, 512KiB, 32MiB)")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not true or false")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (example: 127.0.0.1:8080)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def parse_list(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def parse_networks(text: str | None) -> tuple[IPNetwork, ...]:
    """Addresses or CIDRs (`10.0.0.0/8, 192.168.1.7, ::1`) as networks."""
    networks = []
    for item in parse_list(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"{item!r} is not an IP address or CIDR (example: 10.0.0.0/8)"
            ) from None
    return tuple(networks)


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """The user data directory; as root a system folder (embedded PostgreSQL opens its parents)."""
    if os.name == "posix" and os.geteuid() == 0:
        return Path("/var/lib/agentserver")
    xdg = environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path(environ.get("HOME", "~")).expanduser() / ".local" / "share"
    return base / "agentserver"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `serve` needs to know, validated once at start."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    db_url: str | None = field(default=None, repr=False)  # a secret: never in logs
    data_dir: Path = Path("/var/lib/agentserver")
    base_domain: str | None = None
    base_scheme: str = "http"
    backend: str = "process"
    idle_timeout: float = 1800.0
    proxy_timeout: float = 60.0
    allow_registration: bool = True
    opencode_bin: str = "opencode"
    openclaw_bin: str | None = None
    sandbox_user: str = "agentserver-sandbox"
    agent_image: str = "agentserver-agent:latest"
    openclaw_image: str | None = None
    docker_network: str = "agentserver"
    agent_memory_limit: int = 2 << 30
    agent_nano_cpus: int = 2_000_000_000
    agent_pids_limit: int = 256
    anthropic_api_key: str | None = field(default=None, repr=False)  # a secret: never in logs
    anthropic_auth_token: str | None = field(default=None, repr=False)  # a secret: never in logs
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_proxy_url: str | None = None
    llm_rpm: int = 0
    llm_tokens_per_day: int = 0
    llm_models: tuple[str, ...] = ()
    llm_max_body: int = 32 << 20
    max_body: int = 1 << 20
    oidc_redirect_base_url: str | None = None
    github_client_id: str | None = None
    github_client_secret: str | None = field(default=None, repr=False)  # a secret: never in logs
    github_allowed_orgs: tuple[str, ...] = ()
    oidc_issuer_url: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = field(default=None, repr=False)  # a secret: never in logs
    oidc_allowed_domains: tuple[str, ...] = ()
    oidc_link_by_email: bool = True
    github_api_url: str = "https://api.github.com"
    github_oauth_url: str = "https://github.com"
    kube_namespace_prefix: str = "agent-ws"
    runtime_class: str | None = None
    session_lifetime: float = 7 * 86400.0
    extra: Mapping[str, str] = field(default_factory=dict)
    trusted_proxies: tuple[IPNetwork, ...] = ()
    proxy_body_timeout: float = 30.0
    allow_unisolated_sandboxes: bool = False
    # Flags of secrets given on the command line (the server warns once it listens).
    secret_flags: tuple[str, ...] = ()
    agent_file_size_limit: int = 8 << 30
    reconcile_interval: float = 60.0
    tunnel_max_streams: int = 100
    tunnel_receive_budget: int = 16 << 20
    tunnel_send_timeout: float = 60.0
    max_connections: int = 0  # 0: from the open-files limit (proxy/connections.py)
    keep_alive_timeout: float = 30.0
    metrics_token: str | None = field(default=None, repr=False)  # a secret: never in logs

    @property
    def secure_cookies(self) -> bool:
        return self.base_scheme == "https"

    def with_port(self, port: int) -> Settings:
        """A copy whose listen port (and default base domain) reflect the port actually bound."""
        base = self.base_domain
        if base is None or base == f"localhost:{self.listen_port}":
            base = f"localhost:{port}"
        return _replace(self, listen_port=port, base_domain=base)

    @property
    def domain(self) -> str:
        return self.base_domain or f"localhost:{self.listen_port}"

    @property
    def main_url(self) -> str:
        return f"{self.base_scheme}://{self.domain}"

    @property
    def llm_proxy_url(self) -> str:
        """How sandboxes reach /proxy/anthropic (a container may need another address)."""
        if self.anthropic_proxy_url:
            return self.anthropic_proxy_url.rstrip("/")
        host = "127.0.0.1" if self.listen_host in ("0.0.0.0", "::", "") else self.listen_host
        return f"http://{host}:{self.listen_port}/proxy/anthropic"


def _replace(settings: Settings, **changes: object) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)  # type: ignore[arg-type]


def _pick(name: str, values: Mapping[str, str | None], environ: Mapping[str, str]) -> str | None:
    """Flag beats environment beats default; an empty environment value counts as unset.

    A secret can also come from a file named by `<VARIABLE>_FILE` (Docker's convention), so
    it need not be on the command line (any local user reads /proc/PID/cmdline) or in the
    environment of every process the server starts.
    """
    option = OPTION_BY_NAME[name]
    given = values.get(name)
    if given is not None:
        return given
    env = environ.get(option.env)
    file = environ.get(f"{option.env}_FILE") if option.secret else None
    if env not in (None, "") and file:
        raise ConfigError(
            f"{option.env} and {option.env}_FILE are both set: keep one", field=option.name
        )
    if env not in (None, ""):
        return env
    if file:
        return read_secret_file(option, file)
    return option.default


def read_secret_file(option: Option, path: str) -> str:
    """The secret in the file `<VARIABLE>_FILE` names, without its trailing newline."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_SECRET_FILE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{option.env}_FILE: cannot read {path}: {reason}", field=option.name
        ) from None
    if len(text) > MAX_SECRET_FILE:
        raise ConfigError(
            f"{option.env}_FILE: {path} is larger than {MAX_SECRET_FILE} bytes", field=option.name
        )
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"{option.env}_FILE: {path} is empty", field=option.name)
    return secret


def secrets_on_command_line(values: Mapping[str, str | None]) -> list[str]:
    """The flags of secret options given on the command line (readable by any local user)."""
    return [o.flag for o in OPTIONS if o.secret and values.get(o.name) is not None]


def _where(name: str, values: Mapping[str, str | None]) -> str:
    option = OPTION_BY_NAME[name]
    return option.flag if values.get(name) is not None else f"{option.flag} / {option.env}"


def build_settings(values: Mapping[str, str | None], environ: Mapping[str, str]) -> Settings:
    """Validate raw option text into Settings; a bad value raises ConfigError naming its option."""
    raw = {o.name: _pick(o.name, values, environ) for o in OPTIONS}

    def convert(name: str, parser: object) -> object:
        text = raw[name]
        try:
            return parser(text)  # type: ignore[operator]
        except ValueError as exc:
            raise ConfigError(f"{_where(name, values)}: {exc}", field=name) from None

    def positive_int(text: str | None) -> int:
        if text is None or not text.strip().isdigit():
            raise ValueError(f"{text!r} is not a whole number ≥ 0")
        return int(text)

    def at_least_one(text: str | None) -> int:
        if positive_int(text) < 1:
            raise ValueError("must be at least 1")
        return int(text or "")

    host, port = convert("listen", lambda t: parse_listen(t or ""))  # type: ignore[misc]
    scheme = (raw["base_scheme"] or "http").lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"{_where('base_scheme', values)}: {scheme!r} must be http or https")
    backend = (raw["backend"] or "process").lower()
    if backend in ("k8s", "kube"):
        backend = "kubernetes"
    if backend not in BACKENDS:
        raise ConfigError(
            f"{_where('backend', values)}: {backend!r} must be one of {', '.join(BACKENDS)}"
        )
    base_domain = raw["base_domain"]
    if base_domain is not None:
        base_domain = base_domain.strip().strip(".").lower() or None
        if base_domain and not re.fullmatch(r"[a-z0-9.-]+(:\d+)?", base_domain):
            raise ConfigError(f"{_where('base_domain', values)}: {base_domain!r} is not a domain")
    sandbox_user = (raw["sandbox_user"] or "agentserver-sandbox").strip()
    if not _USER_NAME.fullmatch(sandbox_user):
        raise ConfigError(
            f"{_where('sandbox_user', values)}: {sandbox_user!r} is not a user name"
            " (lowercase letters, digits, _ and -, starting with a letter or _)",
            field="sandbox_user",
        )
    data_dir = Path(raw["data_dir"]).expanduser() if raw["data_dir"] else default_data_dir(environ)
    for name in (
        "oidc_redirect_base_url",
        "oidc_issuer_url",
        "anthropic_base_url",
        "anthropic_proxy_url",
    ):
        url = raw[name]
        if url and not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"{_where(name, values)}: {url!r} is not an http(s) URL")
    return Settings(
        listen_host=host,  # type: ignore[has-type]
        listen_port=port,  # type: ignore[has-type]
        db_url=raw["db_url"] or None,
        data_dir=data_dir.resolve(),
        base_domain=base_domain,
        base_scheme=scheme,
        backend=backend,
        idle_timeout=convert("idle_timeout", lambda t: parse_duration(t or "")),  # type: ignore[arg-type]
        proxy_timeout=convert("proxy_timeout", positive_duration),  # type: ignore[arg-type]
        allow_registration=convert("allow_registration", lambda t: parse_bool(t or "")),  # type: ignore[arg-type]
        opencode_bin=raw["opencode_bin"] or "opencode",
        openclaw_bin=raw["openclaw_bin"] or None,
        sandbox_user=sandbox_user,
        agent_image=raw["agent_image"] or "agentserver-agent:latest",
        openclaw_image=raw["openclaw_image"] or None,
        docker_network=raw["docker_network"] or "agentserver",
        agent_memory_limit=convert("agent_memory_limit", lambda t: parse_size(t or "")),  # type: ignore[arg-type]
        agent_nano_cpus=convert("agent_nano_cpus", positive_int),  # type: ignore[arg-type]
        agent_pids_limit=convert("agent_pids_limit", positive_int),  # type: ignore[arg-type]
        anthropic_api_key=raw["anthropic_api_key"] or None,
        anthropic_auth_token=raw["anthropic_auth_token"] or None,
        anthropic_base_url=(raw["anthropic_base_url"] or "https://api.anthropic.com").rstrip("/"),
        anthropic_proxy_url=raw["anthropic_proxy_url"] or None,
        llm_rpm=convert("llm_rpm", positive_int),  # type: ignore[arg-type]
        llm_tokens_per_day=convert("llm_tokens_per_day", positive_int),  # type: ignore[arg-type]
        llm_models=parse_list(raw["llm_models"]),
        llm_max_body=convert("llm_max_body", lambda t: parse_size(t or "")),  # type: ignore[arg-type]
        max_body=convert("max_body", lambda t: parse_size(t or "")),  # type: ignore[arg-type]
        oidc_redirect_base_url=(raw["oidc_redirect_base_url"] or "").rstrip("/") or None,
        github_client_id=raw["github_client_id"] or None,
        github_client_secret=raw["github_client_secret"] or None,
        github_allowed_orgs=tuple(o.lower() for o in parse_list(raw["github_allowed_orgs"])),
        oidc_issuer_url=(raw["oidc_issuer_url"] or "").rstrip("/") or None,
        oidc_client_id=raw["oidc_client_id"] or None,
        oidc_client_secret=raw["oidc_client_secret"] or None,
        oidc_allowed_domains=tuple(
            d.lower().lstrip("@") for d in parse_list(raw["oidc_allowed_domains"])
        ),
        oidc_link_by_email=convert("oidc_link_by_email", lambda t: parse_bool(t or "")),  # type: ignore[arg-type]
        github_api_url=(raw["github_api_url"] or "https://api.github.com").rstrip("/"),
        github_oauth_url=(raw["github_oauth_url"] or "https://github.com").rstrip("/"),
        kube_namespace_prefix=raw["kube_namespace_prefix"] or "agent-ws",
        runtime_class=raw["runtime_class"] or None,
        trusted_proxies=convert("trusted_proxies", parse_networks),  # type: ignore[arg-type]
        proxy_body_timeout=convert("proxy_body_timeout", positive_duration),  # type: ignore[arg-type]
        allow_unisolated_sandboxes=convert(
            "allow_unisolated_sandboxes",
            lambda t: parse_bool(t or ""),  # type: ignore[arg-type]
        ),
        secret_flags=tuple(secrets_on_command_line(values)),
        agent_file_size_limit=convert("agent_file_size_limit", lambda t: parse_size(t or "")),  # type: ignore[arg-type]
        reconcile_interval=convert("reconcile_interval", lambda t: parse_duration(t or "")),  # type: ignore[arg-type]
        tunnel_max_streams=convert("tunnel_max_streams", at_least_one),  # type: ignore[arg-type]
        tunnel_receive_budget=convert("tunnel_receive_budget", lambda t: parse_size(t or "")),  # type: ignore[arg-type]
        tunnel_send_timeout=convert("tunnel_send_timeout", positive_duration),  # type: ignore[arg-type]
        max_connections=convert("max_connections", lambda t: positive_int(t or "0")),  # type: ignore[arg-type]
        keep_alive_timeout=convert("keep_alive_timeout", positive_duration),  # type: ignore[arg-type]
        metrics_token=raw["metrics_token"] or None,
    )


def markdown_table() -> str:
    """The configuration table README.md shows (a test keeps the two identical)."""
    rows = ["| Flag | Environment variable | Default | What it does |", "|---|---|---|---|"]
    for option in OPTIONS:
        flag = option.flag
        if option.default in ("true", "false"):
            flag = f"{option.flag} / --no-{option.flag[2:]}"
        default = f"`{option.default}`" if option.default is not None else "—"
        help_text = option.help.replace("|", "\\|")
        rows.append(f"| `{flag}` | `{option.env}` | {default} | {help_text} |")
    return "\n".join(rows) + "\n"
