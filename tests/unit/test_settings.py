"""Settings: flags beat environment beat defaults, and every bad value names its option."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentserver.errors import ConfigError
from agentserver.settings import (
    OPTION_BY_NAME,
    OPTIONS,
    Settings,
    build_settings,
    parse_bool,
    parse_duration,
    parse_listen,
    parse_size,
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
