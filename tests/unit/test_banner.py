"""The start-up summary: what an operator reads once `serve` is ready."""

from __future__ import annotations

from agentserver.banner import startup_lines, warnings
from agentserver.settings import build_settings


def test_a_wide_listen_with_a_localhost_base_domain_warns() -> None:
    """Listening on 0.0.0.0 while sandboxes get localhost URLs is called out, naming the fix."""
    found = warnings(build_settings({"listen": "0.0.0.0:8080"}, {}))
    assert len(found) == 1
    assert "localhost:8080" in found[0]
    assert "--base-domain" in found[0]


def test_loopback_or_a_real_base_domain_does_not_warn() -> None:
    """Loopback listening, or a real base domain, needs no warning."""
    assert warnings(build_settings({"listen": "127.0.0.1:8080"}, {})) == []
    wide = {"listen": "0.0.0.0:8080", "base_domain": "agents.example.com"}
    assert warnings(build_settings(wide, {})) == []


def test_summary_names_url_data_sandboxes_domain_and_missing_key() -> None:
    """The summary gives the URL, data directory, backend line, sandbox URL form and key state."""
    lines = startup_lines(
        build_settings({"data_dir": "/srv/agents"}, {}),
        "http://localhost:8080",
        "process backend, isolated with bubblewrap",
    )
    text = "\n".join(lines)
    assert lines[0] == "agentserver listening on http://localhost:8080"
    assert "embedded PostgreSQL in /srv/agents" in text
    assert "process backend, isolated with bubblewrap" in text
    assert "http://oc-{id}.localhost:8080" in text
    assert "prompts in sandboxes will fail" in text
    assert not any(line.startswith("warning:") for line in lines)


def test_summary_with_a_key_never_prints_it() -> None:
    """A configured key is reported as present, and its value never appears."""
    lines = startup_lines(
        build_settings({"anthropic_api_key": "sk-ant-secret-value"}, {}), "http://x", "docker"
    )
    text = "\n".join(lines)
    assert "API key configured" in text
    assert "sk-ant-secret-value" not in text
