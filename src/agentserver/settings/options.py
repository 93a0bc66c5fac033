"""Settings: each `serve` option declared once, on its field, grouped by concern (pure)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from agentserver.settings import values as v
from agentserver.settings.option import Option, declared_options, setting
from agentserver.settings.values import IPNetwork

# `--listen` is one option that fills two fields, listen_host and listen_port.
LISTEN = Option(
    "listen",
    "AGENTSERVER_LISTEN",
    "127.0.0.1:8080",
    "Address to listen on, HOST:PORT (port 0 picks a free one).",
    parse=v.listen_address,
    fields=("listen_host", "listen_port"),
)
_HOST, _PORT = v.listen_address(LISTEN.default)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `serve` needs to know, validated once at start."""

    # Server: where it listens and how its URLs look.
    listen_host: str = _HOST
    listen_port: int = _PORT
    base_domain: str | None = setting(
        "BASE_DOMAIN",
        None,
        v.domain,
        "Domain under which sandboxes get subdomains, oc-{id}.{domain}"
        " (default: localhost:{port}).",
    )
    base_scheme: str = setting(
        "BASE_SCHEME",
        "http",
        v.url_scheme,
        "URL scheme of generated URLs: http or https (https also marks cookies Secure).",
        blank_is_default=True,
    )
    trusted_proxies: tuple[IPNetwork, ...] = setting(
        "AGENTSERVER_TRUSTED_PROXIES",
        None,
        v.parse_networks,
        "Comma-separated addresses or CIDRs of reverse proxies whose X-Forwarded-For or"
        " Forwarded header names the real client (throttles key on it); empty: trust none.",
    )

    # Client limits: connections and request bodies.
    max_connections: int = setting(  # 0: from the open-files limit (proxy/connections.py)
        "AGENTSERVER_MAX_CONNECTIONS",
        None,
        v.whole_or_zero,
        "Most client connections open at once; at the cap the one idle longest is closed, or"
        " with none idle the newcomer gets a 503 (default: half the open-files limit less 128).",
    )
    keep_alive_timeout: float = setting(
        "AGENTSERVER_KEEP_ALIVE_TIMEOUT",
        "30s",
        v.positive_duration,
        "How long a client connection may wait for its next request, whose head must have"
        " arrived whole by then; the connection is closed after.",
    )
    max_body: int = setting(
        "AGENTSERVER_MAX_BODY", "1MiB", v.size, "Largest JSON body the API accepts."
    )

    # Storage: the database and the data directory.
    db_url: str | None = setting(
        "DATABASE_URL",
        None,
        v.optional_text,
        "PostgreSQL URL; when empty an embedded PostgreSQL runs in the data directory.",
        secret=True,
    )
    data_dir: Path = setting(  # noqa: RUF009 — setting() makes a field; its default is immutable
        "AGENTSERVER_DATA_DIR",
        None,
        v.directory,
        "Where the embedded database, sandbox homes and workspace disks live"
        " (default: the user data directory; /var/lib/agentserver as root).",
        unset=v.data_directory,
        field_default=Path("/var/lib/agentserver"),
    )

    # Sandboxes: the backend that runs them, their programs and images.
    backend: str = setting(
        "AGENTSERVER_BACKEND",
        "process",
        v.backend,
        "Sandbox backend: process, docker or kubernetes.",
        blank_is_default=True,
    )
    idle_timeout: float = setting(
        "IDLE_TIMEOUT",
        "30m",
        v.duration,
        "Pause sandboxes idle this long (e.g. 90s, 30m, 2h); 0 disables.",
    )
    reconcile_interval: float = setting(
        "AGENTSERVER_RECONCILE_INTERVAL",
        "60s",
        v.duration,
        "How often sandbox rows and the backend are made to agree again (a status write lost"
        " while the database was down, an exit missed); 0 reconciles only at start.",
    )
    opencode_bin: str = setting(
        "OPENCODE_BIN",
        "opencode",
        v.text,
        "The opencode binary the process backend runs.",
        blank_is_default=True,
    )
    openclaw_bin: str | None = setting(
        "OPENCLAW_BIN",
        None,
        v.optional_text,
        "The OpenClaw binary the process backend runs for openclaw sandboxes"
        " (unset: type unavailable).",
    )
    sandbox_user: str = setting(
        "AGENTSERVER_SANDBOX_USER",
        "agentserver-sandbox",
        v.user_name,
        "System user the process backend checks bubblewrap as when the server runs as root (the"
        " default is created if missing); each sandbox then runs as a uid of its own.",
        blank_is_default=True,
    )
    allow_unisolated_sandboxes: bool = setting(
        "AGENTSERVER_ALLOW_UNISOLATED_SANDBOXES",
        "false",
        v.boolean,
        "Let the process backend start sandboxes where bubblewrap does not work; they can then"
        " see the server's command line and reach other sandboxes' ports (the web UI says so).",
    )
    agent_image: str = setting(
        "AGENT_IMAGE",
        "agentserver-agent:latest",
        v.text,
        "Container image for opencode sandboxes (docker, kubernetes).",
        blank_is_default=True,
    )
    openclaw_image: str | None = setting(
        "OPENCLAW_IMAGE",
        None,
        v.optional_text,
        "Container image for OpenClaw sandboxes (docker, kubernetes).",
    )
    docker_network: str = setting(
        "AGENT_NETWORK",
        "agentserver",
        v.text,
        "User-defined Docker network the sandboxes join.",
        blank_is_default=True,
    )
    kube_namespace_prefix: str = setting(
        "SANDBOX_NAMESPACE_PREFIX",
        "agent-ws",
        v.text,
        "Kubernetes namespace prefix, one namespace per workspace.",
        blank_is_default=True,
    )
    runtime_class: str | None = setting(
        "RUNTIME_CLASS",
        None,
        v.optional_text,
        "Kubernetes runtimeClassName for sandbox pods (e.g. gvisor).",
    )
    kube_namespace: str | None = setting(
        "SANDBOX_NAMESPACE",
        None,
        v.optional_dns_label,
        "Kubernetes namespace for every sandbox, for clusters where the server may not create"
        " namespaces (it must exist); unset: one namespace per workspace, named with the prefix.",
    )
    kube_server_namespace: str | None = setting(
        "AGENTSERVER_KUBE_SERVER_NAMESPACE",
        None,
        v.optional_dns_label,
        "Kubernetes namespace agentserver's own pods run in, the only ones sandboxes accept"
        " connections from and may call (default: the server's own namespace in the cluster,"
        " else default).",
    )
    kube_server_labels: tuple[tuple[str, str], ...] = setting(
        "AGENTSERVER_KUBE_SERVER_LABELS",
        "app.kubernetes.io/name=agentserver",
        v.labels,
        "Labels (KEY=VALUE, comma-separated) of agentserver's own pods: the sandbox"
        " NetworkPolicy admits traffic from them and lets sandboxes reach them (the LLM proxy).",
        blank_is_default=True,
    )
    kube_cpu_request: str = setting(
        "SANDBOX_CPU_REQUEST",
        "250m",
        v.quantity,
        "CPU a Kubernetes sandbox pod requests (its limit is AGENT_NANO_CPUS).",
        blank_is_default=True,
    )
    kube_memory_request: str = setting(
        "SANDBOX_MEMORY_REQUEST",
        "512Mi",
        v.quantity,
        "Memory a Kubernetes sandbox pod requests (its limit is AGENT_MEMORY_LIMIT).",
        blank_is_default=True,
    )
    home_size: str = setting(
        "SANDBOX_HOME_SIZE",
        "5Gi",
        v.quantity,
        "Size of each Kubernetes sandbox's home volume (a PVC deleted with the sandbox).",
        blank_is_default=True,
    )
    workspace_disk_size: str = setting(
        "WORKSPACE_DISK_SIZE",
        "20Gi",
        v.quantity,
        "Size of each workspace's shared disk on Kubernetes (a ReadWriteMany PVC at /data/disk0).",
        blank_is_default=True,
    )
    workspace_storage_class: str | None = setting(
        "WORKSPACE_STORAGE_CLASS",
        None,
        v.optional_text,
        "Kubernetes storage class of the workspace disks; it must offer ReadWriteMany"
        " (unset: the cluster's default class).",
    )
    sandbox_env_key: str | None = setting(
        "AGENTSERVER_SANDBOX_ENV_KEY",
        None,
        v.optional_fernet_key,
        "Key that seals sandboxes' environment variables in the database (32 bytes, URL-safe"
        " base64); unset: a key made once and kept in the database, which every replica"
        " shares (a `sandbox-env.key` an older server left in the data directory becomes"
        " that key). When given, give the same key to every replica.",
        secret=True,
    )

    # Sandbox limits: what one sandbox may use.
    agent_memory_limit: int = setting(
        "AGENT_MEMORY_LIMIT",
        "2147483648",
        v.size,
        "Memory limit per sandbox, in bytes: its container's (Docker, Kubernetes), or its"
        " cgroup's (process backend, where the server can create cgroups).",
    )
    agent_nano_cpus: int = setting(
        "AGENT_NANO_CPUS",
        "2000000000",
        v.whole,
        "CPU limit per sandbox, in billionths of a CPU: its container's (Docker, Kubernetes), or"
        " its cgroup's CPU quota (process backend, where the server can create cgroups; its"
        " sandboxes also run at a lower priority).",
    )
    agent_pids_limit: int = setting(
        "AGENT_PIDS_LIMIT",
        "256",
        v.whole,
        "Process (and thread) limit per sandbox: its container's (Docker), or its cgroup's"
        " pids.max and, on a root server, RLIMIT_NPROC of its own uid (process backend);"
        " 0 means none.",
    )
    agent_file_size_limit: int = setting(
        "AGENT_FILE_SIZE_LIMIT",
        "8GiB",
        v.size,
        "Largest file a process sandbox may write (RLIMIT_FSIZE; not a quota on the whole"
        " disk); 0 means no limit.",
    )
    max_idle_timeout: float = setting(
        "AGENTSERVER_MAX_IDLE_TIMEOUT",
        "24h",
        v.duration,
        "Longest idle timeout a workspace's owners may set for it (--idle-timeout is the default"
        " of a workspace that sets none); 0 means no maximum, and then a workspace may also set 0"
        " to never pause. With --idle-timeout 0 nothing is paused, whatever a workspace sets.",
    )

    # Subdomain proxy: how long it waits for a sandbox and for a client.
    proxy_timeout: float = setting(
        "AGENTSERVER_PROXY_TIMEOUT",
        "60s",
        v.positive_duration,
        "How long the subdomain proxy waits for a sandbox's response headers (504 after);"
        " a running response or stream is never cut.",
    )
    proxy_body_timeout: float = setting(
        "AGENTSERVER_PROXY_BODY_TIMEOUT",
        "30s",
        v.positive_duration,
        "How long the subdomain proxy waits for the next bytes of a request body before it"
        " answers 408 and closes the connection.",
    )

    # Tunnel: what one local agent's tunnel may hold.
    tunnel_max_streams: int = setting(
        "AGENTSERVER_TUNNEL_MAX_STREAMS",
        "100",
        v.at_least_one,
        "Requests open at once through one local agent's tunnel (at most what the agent"
        " announces, 100 for ours); more are answered 503 until one finishes.",
    )
    tunnel_receive_budget: int = setting(
        "AGENTSERVER_TUNNEL_RECEIVE_BUDGET",
        "16MiB",
        v.size,
        "Bytes one local agent may send ahead, all its streams together, before browsers read"
        " them (a stream gets up to 2 MiB while the budget lasts, 128 KiB beyond it).",
    )
    tunnel_send_timeout: float = setting(
        "AGENTSERVER_TUNNEL_SEND_TIMEOUT",
        "60s",
        v.positive_duration,
        "How long an upload to a local agent may wait for the agent to take more before its"
        " request is reset and the browser gets an error.",
    )

    # LLM proxy: the upstream Anthropic API and what workspaces may spend.
    anthropic_api_key: str | None = setting(
        "ANTHROPIC_API_KEY",
        None,
        v.optional_text,
        "Anthropic API key the LLM proxy injects (never given to sandboxes).",
        secret=True,
    )
    anthropic_auth_token: str | None = setting(
        "ANTHROPIC_AUTH_TOKEN",
        None,
        v.optional_text,
        "Anthropic bearer token, an alternative to the API key.",
        secret=True,
    )
    anthropic_base_url: str = setting(
        "ANTHROPIC_BASE_URL",
        "https://api.anthropic.com",
        v.http_url,
        "Upstream Anthropic API base URL (a path in it is kept).",
        blank_is_default=True,
    )
    anthropic_proxy_url: str | None = setting(
        "ANTHROPIC_PROXY_URL",
        None,
        v.optional_http_url,
        "URL sandboxes use to reach the LLM proxy (default: {scheme}://{listen}/proxy/anthropic).",
    )
    llm_rpm: int = setting(
        "AGENTSERVER_LLM_RPM",
        "0",
        v.whole,
        "LLM requests per minute per workspace; 0 = unlimited.",
    )
    llm_tokens_per_day: int = setting(
        "AGENTSERVER_LLM_TOKENS_PER_DAY",
        "0",
        v.whole,
        "LLM tokens per day per workspace; 0 = unlimited.",
    )
    llm_models: tuple[str, ...] = setting(
        "AGENTSERVER_LLM_MODELS",
        None,
        v.names,
        "Comma-separated model allow-list for the LLM proxy (empty: all).",
    )
    llm_max_body: int = setting(
        "AGENTSERVER_LLM_MAX_BODY",
        "32MiB",
        v.size,
        "Largest request body the LLM proxy accepts.",
    )

    # Sign-in: password registration, GitHub and generic OIDC.
    allow_registration: bool = setting(
        "AGENTSERVER_ALLOW_REGISTRATION",
        "true",
        v.boolean,
        "Let anyone register a password account (the first user always may).",
    )
    oidc_redirect_base_url: str | None = setting(
        "OIDC_REDIRECT_BASE_URL",
        None,
        v.optional_base_url,
        "External URL of this server for OAuth/OIDC callbacks.",
    )
    github_client_id: str | None = setting(
        "GITHUB_CLIENT_ID", None, v.optional_text, "GitHub OAuth app client id."
    )
    github_client_secret: str | None = setting(
        "GITHUB_CLIENT_SECRET",
        None,
        v.optional_text,
        "GitHub OAuth app client secret.",
        secret=True,
    )
    github_allowed_orgs: tuple[str, ...] = setting(
        "GITHUB_ALLOWED_ORGS",
        None,
        v.lowercase_names,
        "Comma-separated GitHub organisations allowed to sign in (empty: any).",
    )
    github_api_url: str = setting(
        "GITHUB_API_URL",
        "https://api.github.com",
        v.no_trailing_slash,
        "GitHub REST API base URL (for GitHub Enterprise).",
        blank_is_default=True,
    )
    github_oauth_url: str = setting(
        "GITHUB_OAUTH_URL",
        "https://github.com",
        v.no_trailing_slash,
        "GitHub OAuth base URL (for GitHub Enterprise).",
        blank_is_default=True,
    )
    oidc_issuer_url: str | None = setting(
        "OIDC_ISSUER_URL",
        None,
        v.optional_base_url,
        "Generic OIDC issuer URL (discovery at /.well-known/openid-configuration).",
    )
    oidc_client_id: str | None = setting(
        "OIDC_CLIENT_ID", None, v.optional_text, "Generic OIDC client id."
    )
    oidc_client_secret: str | None = setting(
        "OIDC_CLIENT_SECRET", None, v.optional_text, "Generic OIDC client secret.", secret=True
    )
    oidc_allowed_domains: tuple[str, ...] = setting(
        "OIDC_ALLOWED_DOMAINS",
        None,
        v.email_domains,
        "Comma-separated email domains allowed to sign in via SSO (exact match; empty: any).",
    )
    oidc_link_by_email: bool = setting(
        "OIDC_LINK_BY_EMAIL",
        "true",
        v.boolean,
        "Link a new SSO identity to an existing account with the same email when a provider"
        " verified it for both (never an address typed in at registration).",
    )
    max_token_lifetime: float = setting(
        "AGENTSERVER_MAX_TOKEN_LIFETIME",
        "8760h",
        v.positive_duration,
        "Longest lifetime a personal API token may be given (new tokens default to 30 days,"
        " or this when shorter).",
    )

    # Observability.
    metrics_token: str | None = setting(
        "AGENTSERVER_METRICS_TOKEN",
        None,
        v.optional_text,
        "When set, GET /metrics requires `Authorization: Bearer <token>` (401 otherwise).",
        secret=True,
    )
    log_format: str = setting(
        "AGENTSERVER_LOG_FORMAT",
        "text",
        v.log_format,
        "Log lines as readable `text`, or `json`: one object per line (time, level, logger,"
        " message, request_id and the request's fields) for a cluster's log collector.",
        blank_is_default=True,
    )
    audit_retention_days: int = setting(
        "AGENTSERVER_AUDIT_RETENTION_DAYS",
        "365",
        v.whole,
        "Days the audit log keeps an entry before it is pruned; 0 keeps every entry.",
    )

    # Local agents: what the "connect a local agent" dialog offers for download.
    agent_zipapp: str | None = setting(
        "AGENTSERVER_AGENT_ZIPAPP",
        None,
        v.optional_text,
        "A file the server sends at /download/agentserver-agent.pyz instead of the agent it"
        " builds from itself (e.g. for a server frozen with PyInstaller, which cannot).",
    )
    git_file_urls: bool = setting(
        "AGENTSERVER_GIT_FILE_URLS",
        "false",
        v.boolean,
        "Accept file:// repository URLs for a new sandbox's git clone (for tests; otherwise"
        " only https://, ssh://, git:// and user@host:path).",
    )
    sandbox_subnet: ipaddress.IPv4Network = setting(  # noqa: RUF009 (an immutable value)
        "AGENTSERVER_SANDBOX_SUBNET",
        "10.250.0.0/16",
        v.sandbox_subnet,
        "Addresses for the process backend's sandboxes, a /30 each on a network namespace of"
        " its own (their agents and previews are reached there); a range no other network"
        " here uses.",
        blank_is_default=True,
    )

    # Several replicas: processes sharing one --db-url serve as one (architecture.md §cluster).
    relay_url: str | None = setting(
        "AGENTSERVER_RELAY_URL",
        None,
        v.optional_http_url,
        "Where other replicas reach this one (its relay route), e.g. http://10.0.0.7:8080;"
        " unset: http:// and the --listen address (enough for replicas on one machine).",
    )
    relay_secret: str | None = setting(
        "AGENTSERVER_RELAY_SECRET",
        None,
        v.optional_text,
        "Secret from which replicas derive the credential of their relayed requests; unset: a"
        " random secret made once and kept in the database, shared by every replica.",
        secret=True,
    )
    shutdown_grace: float = setting(
        "AGENTSERVER_SHUTDOWN_GRACE",
        "30s",
        v.duration,
        "On SIGTERM, how long in-flight requests, relays and event streams may take to finish"
        " (the replica reports not ready and sends its agents elsewhere first); keep it under"
        " Kubernetes' terminationGracePeriodSeconds.",
    )

    # Not options: fixed for now, or filled in by whoever builds the Settings.
    session_lifetime: float = 7 * 86400.0
    extra: Mapping[str, str] = field(default_factory=dict)
    # Flags of secrets given on the command line (the server warns once it listens).
    secret_flags: tuple[str, ...] = ()

    @property
    def secure_cookies(self) -> bool:
        return self.base_scheme == "https"

    def with_port(self, port: int) -> Settings:
        """A copy whose listen port (and default base domain) reflect the port actually bound."""
        base = self.base_domain
        if base is None or base == f"localhost:{self.listen_port}":
            base = f"localhost:{port}"
        return replace(self, listen_port=port, base_domain=base)

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


OPTIONS: tuple[Option, ...] = (LISTEN, *declared_options(Settings))
OPTION_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
