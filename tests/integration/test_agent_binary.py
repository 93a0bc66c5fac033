"""The standalone agent (`nox -s agent`): frozen from the agent file, it runs with no Python
and no project anywhere on its path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentserver import __version__, agent_bundle
from tests.conftest import REPO

pytest.importorskip("PyInstaller", reason="PyInstaller is in the test group (uv sync)")


def test_the_frozen_agent_runs_alone(tmp_path: Path) -> None:
    pyz = agent_bundle.build(tmp_path / "agentserver-agent.pyz").path
    binary = tmp_path / "dist" / "agentserver-agent-linux-x86_64"
    subprocess.run(
        [sys.executable, str(REPO / "scripts/freeze_agent.py"), str(pyz), str(binary)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(elsewhere)}
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, cwd=elsewhere, env=bare
    )
    assert version.stdout.strip() == __version__, version.stderr
    helped = subprocess.run(
        [str(binary), "agent", "connect", "--help"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=bare,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert "--opencode-url" in helped.stdout
