"""Secrets given to `serve`: from *_FILE variables; a warning when one is on the command line."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from agentserver.settings import OPTIONS
from tests.integration.test_process_lifetime import BIN, LISTENING

pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} is not installed (uv sync)")


async def test_a_secret_on_the_command_line_is_warned_about_but_never_logged(
    db_url: str, tmp_path: Path
) -> None:
    """serve reads DATABASE_URL_FILE, and warns (without the value) about a secret flag."""
    url_file = tmp_path / "db-url"
    url_file.write_text(db_url + "\n")
    names = {o.env for o in OPTIONS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(DATABASE_URL_FILE=str(url_file))
    argv = [str(BIN), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d")]
    proc = await trio.lowlevel.open_process(
        [*argv, "--anthropic-api-key", "sk-hunter2-secret"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        seen = b""
        with trio.fail_after(120):
            while not LISTENING.search(seen):
                chunk = await proc.stdout.receive_some()
                assert chunk, f"serve exited before listening (status {proc.poll()})"
                seen += chunk
        proc.send_signal(signal.SIGTERM)
        errors = b""
        with trio.fail_after(30):
            while chunk := await proc.stderr.receive_some():
                errors += chunk
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = errors.decode()
    assert "--anthropic-api-key was given on the command line" in text
    assert "ANTHROPIC_API_KEY_FILE" in text
    assert "sk-hunter2-secret" not in text
    assert db_url.split("@")[0] not in text
