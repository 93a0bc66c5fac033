"""The command-line client's pure parts: tables, and the saved login (0600, env first)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agentserver.client import config
from agentserver.client.output import table


def test_table_aligns_columns_and_shows_missing_values_as_dashes() -> None:
    """Headings upper-case, each column as wide as its widest cell, None as `-`."""
    rows = [{"id": "a1", "name": "first", "x": None}, {"id": "b", "name": "s", "x": True}]
    text = table(rows, [("id", "id"), ("name", "name"), ("x", "x")])
    assert text.splitlines() == ["ID  NAME   X", "a1  first  -", "b   s      yes"]


def test_the_login_is_saved_0600_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saved file is readable by its user only, and loads as it was saved."""
    monkeypatch.delenv(config.SERVER_ENV, raising=False)
    monkeypatch.delenv(config.TOKEN_ENV, raising=False)
    path = tmp_path / "agentserver" / "client.json"
    config.save(config.Login("https://a.example", "ast_x", "id1"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.load(path) == config.Login("https://a.example", "ast_x", "id1")


def test_environment_takes_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AGENTSERVER_SERVER / AGENTSERVER_TOKEN win over the file; without either, no login."""
    path = tmp_path / "client.json"
    monkeypatch.delenv(config.SERVER_ENV, raising=False)
    monkeypatch.delenv(config.TOKEN_ENV, raising=False)
    assert config.load(path) is None
    config.save(config.Login("https://a.example", "ast_file"), path)
    monkeypatch.setenv(config.TOKEN_ENV, "ast_env")
    monkeypatch.setenv(config.SERVER_ENV, "b.example/")
    assert config.load(path) == config.Login("https://b.example", "ast_env", None)
