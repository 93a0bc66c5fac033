"""The old sandbox-env key file a server adopts (sandboxes/env_key.py): read, or refused by name."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from agentserver.errors import ConfigError
from agentserver.sandboxes.env_key import KEY_FILE, key_of_file


def test_no_file_is_no_key(tmp_path: Path) -> None:
    """A data directory without the file (a new install, a fresh pod) offers no key."""
    assert key_of_file(tmp_path) is None


def test_the_file_gives_its_32_bytes(tmp_path: Path) -> None:
    """The file as servers wrote it (a Fernet key and a newline) gives the key's bytes."""
    key = bytes(range(32))
    (tmp_path / KEY_FILE).write_bytes(base64.urlsafe_b64encode(key) + b"\n")
    assert key_of_file(tmp_path) == key


@pytest.mark.parametrize(
    "content", [b"", b"not base64 at all!", base64.urlsafe_b64encode(b"x" * 16)]
)
def test_a_file_that_is_not_a_key_stops_the_start_naming_it(tmp_path: Path, content: bytes) -> None:
    """A damaged key file is refused with its path, never replaced (its values would be lost)."""
    (tmp_path / KEY_FILE).write_bytes(content)
    with pytest.raises(ConfigError, match=KEY_FILE):
        key_of_file(tmp_path)
