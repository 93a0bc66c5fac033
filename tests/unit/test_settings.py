"""Settings: flags beat environment beat defaults, and every bad value names its option."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentserver.errors import ConfigError
from agentserver.settings import (
    OPTION_BY_NAME,
    OPTIONS,
    Option,
    Settings,
    build_settings,
    parse_bool,
    parse_duration,
    parse_listen,
    parse_size,
    secrets_on_command_line,
)


def test_defaults() -> None:
    """With nothing given, serve listens on 127.0.0.1:8080 with the process backend and 30m idle."""
    s = build_settings({}, {"HOME": "/home/x"})
    assert (s.listen_host, s.listen_port) == ("127.0.0.1", 8080)
    assert s.db_url is None
    assert s.backend == "process"
    assert s.idle_timeout == 1800.0
    assert s.allow_registration is True
    assert s.base_scheme == "http"
    assert s.domain == "localhost:8080"
    assert s.main_url == "http://localhost:8080"
    assert s.max_body == 1 << 20
    assert s.session_lifetime == 7 * 86400


def test_flag_beats_environment_beats_default() -> None:
    """A flag wins over its variable; the variable wins over the default."""
    env = {
        "IDLE_TIMEOUT": "2h",
        "AGENTSERVER_LISTEN": "0.0.0.0:9000",
        "DATABASE_URL": "postgresql://e/db",
    }
    s = build_settings({"idle_timeout": "90s"}, env)
    assert s.idle_timeout == 90.0
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 9000)
    assert s.db_url == "postgresql://e/db"


def test_an_empty_variable_counts_as_unset() -> None:
    """`DATABASE_URL=` means the embedded database, and `IDLE_TIMEOUT=` the default."""
    s = build_settings({}, {"DATABASE_URL": "", "IDLE_TIMEOUT": ""})
    assert s.db_url is None
    assert s.idle_timeout == 1800.0


def test_data_dir_follows_xdg_and_flag(tmp_path: Path) -> None:
    """--data-dir is used as given (resolved); without it the data dir is absolute."""
    assert build_settings({"data_dir": str(tmp_path / "d")}, {}).data_dir == tmp_path / "d"
    assert build_settings({}, {"XDG_DATA_HOME": str(tmp_path)}).data_dir.is_absolute()


@pytest.mark.parametrize(
    ("values", "env", "named"),
    [
        ({"idle_timeout": "soon"}, {}, "--idle-timeout:"),
        ({}, {"IDLE_TIMEOUT": "5 minutes"}, "--idle-timeout / IDLE_TIMEOUT:"),
        ({"listen": "8080"}, {}, "--listen:"),
        ({"listen": "127.0.0.1:70000"}, {}, "--listen:"),
        ({}, {"AGENTSERVER_LISTEN": "host:port"}, "--listen / AGENTSERVER_LISTEN:"),
        ({"base_scheme": "ftp"}, {}, "--base-scheme:"),
        ({"backend": "vm"}, {}, "--backend:"),
        ({"base_domain": "bad domain!"}, {}, "--base-domain:"),
        ({"allow_registration": "maybe"}, {}, "--allow-registration:"),
        ({"max_body": "lots"}, {}, "--max-body:"),
        ({}, {"AGENTSERVER_LLM_RPM": "-1"}, "--llm-rpm / AGENTSERVER_LLM_RPM:"),
        ({"oidc_issuer_url": "issuer.example"}, {}, "--oidc-issuer-url:"),
        ({"proxy_timeout": "0"}, {}, "--proxy-timeout:"),
        (
            {},
            {"AGENTSERVER_PROXY_TIMEOUT": "later"},
            "--proxy-timeout / AGENTSERVER_PROXY_TIMEOUT:",
        ),
        ({"tunnel_max_streams": "0"}, {}, "--tunnel-max-streams:"),
        ({"tunnel_max_streams": "many"}, {}, "--tunnel-max-streams:"),
        ({"tunnel_receive_budget": "big"}, {}, "--tunnel-receive-budget:"),
        ({"tunnel_send_timeout": "0"}, {}, "--tunnel-send-timeout:"),
    ],
)
def test_a_bad_value_names_its_flag_and_variable(
    values: dict[str, str], env: dict[str, str], named: str
) -> None:
    """ConfigError's message starts with the flag (and the variable when it came from there)."""
    with pytest.raises(ConfigError) as info:
        build_settings(values, env)
    assert info.value.message.startswith(named)
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("1d", 86400.0),
        (" 10M ", 600.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    """Go-style durations and bare seconds parse to seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10x", "-5s", "5s10", "1h 30m", "abc"])
def test_bad_durations(text: str) -> None:
    """Anything else is refused with examples of what works."""
    with pytest.raises(ValueError, match="examples"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("1MiB", 1 << 20),
        ("512KiB", 512 << 10),
        ("10k", 10 << 10),
        ("1mb", 1_000_000),
        ("2G", 2 << 30),
    ],
)
def test_sizes(text: str, size: int) -> None:
    """Sizes in bytes with binary and decimal units parse to bytes."""
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        (":8080", ("0.0.0.0", 8080)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:443", ("localhost", 443)),
    ],
)
def test_listen_addresses(text: str, pair: tuple[str, int]) -> None:
    """HOST:PORT parses, an empty host means every interface, IPv6 may be bracketed."""
    assert parse_listen(text) == pair


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("ON", True), ("0", False), ("no", False)]
)
def test_booleans(text: str, value: bool) -> None:
    """The usual spellings of true and false are accepted."""
    assert parse_bool(text) is value


def test_https_marks_cookies_secure() -> None:
    """Cookies are Secure exactly when the scheme is https."""
    assert build_settings({"base_scheme": "https"}, {}).secure_cookies
    assert not build_settings({}, {}).secure_cookies


def test_with_port_moves_the_default_base_domain_only() -> None:
    """Binding port 0 rewrites the default localhost domain, never one the operator chose."""
    picked = build_settings({"listen": "127.0.0.1:0"}, {}).with_port(4321)
    assert (picked.listen_port, picked.domain) == (4321, "localhost:4321")
    chosen = build_settings({"listen": "127.0.0.1:0", "base_domain": "Agents.Example.com."}, {})
    assert chosen.with_port(4321).domain == "agents.example.com"


def test_secrets_stay_out_of_repr() -> None:
    """Printing or logging Settings never shows the database URL or API secrets."""
    s = build_settings(
        {
            "db_url": "postgresql://u:pw-db-secret@h/d",
            "anthropic_api_key": "sk-ant-secret",
            "github_client_secret": "gh-secret",
            "oidc_client_secret": "oidc-secret",
            "anthropic_auth_token": "tok-secret",
        },
        {},
    )
    text = repr(s)
    for secret in ("pw-db-secret", "sk-ant-secret", "gh-secret", "oidc-secret", "tok-secret"):
        assert secret not in text


def test_every_option_maps_to_a_settings_field_or_a_listen_pair() -> None:
    """Each declared option lands in Settings, so none is silently ignored."""
    fields = set(Settings.__dataclass_fields__)
    for option in OPTIONS:
        assert option.name == "listen" or option.name in fields, option.name


def test_proxy_timeout_reaches_the_upstream_pool_setting() -> None:
    """`--proxy-timeout 2m` is 120 seconds of waiting for a sandbox's response headers."""
    assert build_settings({"proxy_timeout": "2m"}, {}).proxy_timeout == 120.0
    assert build_settings({}, {}).proxy_timeout == 60.0


def test_unisolated_sandboxes_are_off_unless_allowed() -> None:
    """--allow-unisolated-sandboxes defaults to off; its flag or variable turns it on."""
    assert build_settings({}, {}).allow_unisolated_sandboxes is False
    env = {"AGENTSERVER_ALLOW_UNISOLATED_SANDBOXES": "true"}
    assert build_settings({}, env).allow_unisolated_sandboxes is True
    assert build_settings({"allow_unisolated_sandboxes": "yes"}, {}).allow_unisolated_sandboxes
    with pytest.raises(ConfigError, match="--allow-unisolated-sandboxes"):
        build_settings({"allow_unisolated_sandboxes": "perhaps"}, {})


SECRETS = [o for o in OPTIONS if o.secret]


@pytest.mark.parametrize("option", SECRETS, ids=[o.env for o in SECRETS])
def test_every_secret_can_come_from_a_file(option: Option, tmp_path: Path) -> None:
    """<VARIABLE>_FILE names a file holding the secret (its trailing newline dropped)."""
    secret = tmp_path / "secret"
    # A value of each secret's own form: a URL, a key, or any text.
    shaped = {"db_url": "postgresql://u:p@db/x", "sandbox_env_key": "A" * 43 + "="}
    secret.write_text(shaped.get(option.name, "s3cr3t") + "\n")
    settings = build_settings({}, {f"{option.env}_FILE": str(secret)})
    assert getattr(settings, option.name) == secret.read_text().rstrip("\n")


def test_a_secret_file_problem_names_the_variable_not_the_secret(tmp_path: Path) -> None:
    """A missing or empty secret file, or a secret set both ways, is a clear ConfigError."""
    missing = {"ANTHROPIC_API_KEY_FILE": str(tmp_path / "nope")}
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY_FILE: cannot read"):
        build_settings({}, missing)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        build_settings({}, {"ANTHROPIC_API_KEY_FILE": str(empty)})
    both = {"ANTHROPIC_API_KEY": "k", "ANTHROPIC_API_KEY_FILE": str(empty)}
    with pytest.raises(ConfigError, match="both set"):
        build_settings({}, both)


def test_a_flag_still_beats_a_secret_file(tmp_path: Path) -> None:
    """A flag wins over <VARIABLE>_FILE, as over the variable itself; and it is reported as a
    secret given on the command line."""
    secret = tmp_path / "secret"
    secret.write_text("from-file")
    values = {"anthropic_api_key": "from-flag"}
    assert build_settings(values, {"ANTHROPIC_API_KEY_FILE": str(secret)}).anthropic_api_key == (
        "from-flag"
    )
    assert secrets_on_command_line(values) == ["--anthropic-api-key"]
    assert secrets_on_command_line({"listen": "127.0.0.1:1"}) == []


def test_only_secrets_have_a_file_variant(tmp_path: Path) -> None:
    """A _FILE variable of a setting that is no secret is ignored (not read)."""
    assert build_settings({}, {"BASE_DOMAIN_FILE": str(tmp_path / "nope")}).base_domain is None


def test_reconcile_interval_is_a_duration_from_flag_or_environment() -> None:
    """`--reconcile-interval` / AGENTSERVER_RECONCILE_INTERVAL: 60 s by default, 0 for "only at
    start", and a bad value names the option."""
    assert build_settings({}, {}).reconcile_interval == 60.0
    assert build_settings({"reconcile_interval": "90s"}, {}).reconcile_interval == 90.0
    env = {"AGENTSERVER_RECONCILE_INTERVAL": "0"}
    assert build_settings({}, env).reconcile_interval == 0.0
    with pytest.raises(ConfigError, match="--reconcile-interval"):
        build_settings({"reconcile_interval": "soon"}, {})


def test_tunnel_bounds_reach_their_settings() -> None:
    """The tunnel's stream cap, receive budget and send timeout parse from flags and variables."""
    s = build_settings(
        {"tunnel_max_streams": "7", "tunnel_receive_budget": "4MiB"},
        {"AGENTSERVER_TUNNEL_SEND_TIMEOUT": "90s"},
    )
    assert (s.tunnel_max_streams, s.tunnel_receive_budget, s.tunnel_send_timeout) == (
        7,
        4 << 20,
        90.0,
    )
    defaults = build_settings({}, {})
    assert (defaults.tunnel_max_streams, defaults.tunnel_receive_budget) == (100, 16 << 20)
    assert defaults.tunnel_send_timeout == 60.0


def test_connection_limits_are_read_and_checked() -> None:
    """`--max-connections` and `--keep-alive-timeout` are parsed; bad values name the flag."""
    s = build_settings({"max_connections": "200", "keep_alive_timeout": "5s"}, {})
    assert (s.max_connections, s.keep_alive_timeout) == (200, 5.0)
    default = build_settings({}, {})
    assert (default.max_connections, default.keep_alive_timeout) == (0, 30.0)
    with pytest.raises(ConfigError, match="--max-connections"):
        build_settings({"max_connections": "many"}, {})
    with pytest.raises(ConfigError, match="--keep-alive-timeout"):
        build_settings({"keep_alive_timeout": "0"}, {})


def test_the_metrics_token_is_a_secret() -> None:
    """The /metrics token comes from its variable and never shows in Settings' repr."""
    s = build_settings({}, {"AGENTSERVER_METRICS_TOKEN": "metrics-secret"})
    assert s.metrics_token == "metrics-secret"
    assert "metrics-secret" not in repr(s)
    assert OPTION_BY_NAME["metrics_token"].secret
