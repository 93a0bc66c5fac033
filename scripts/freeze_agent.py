"""Freeze the agent file into a standalone executable (no Python needed): `nox -s agent`.

usage: python scripts/freeze_agent.py AGENT_PYZ OUT   (PyInstaller must be installed)

It unpacks the agent file (agentserver/agent_bundle.py) and freezes its entry with PyInstaller
from there, so the executable holds exactly what the agent file holds — not the server.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# Installed next to PyInstaller but never imported by the agent: keep them out if a hook asks.
SERVER_ONLY = ("cffi", "cryptography", "psycopg", "quart", "hypercorn", "docker", "kubernetes")


def freeze(pyz: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="agent-freeze-") as work:
        source = Path(work) / "src"
        with zipfile.ZipFile(pyz) as archive:
            archive.extractall(source)
        excludes = [arg for name in SERVER_ONLY for arg in ("--exclude-module", name)]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "PyInstaller",
                "--onefile",
                "--noconfirm",
                "--log-level=WARN",
                "--name",
                out.name,
                "--paths",
                str(source),
                "--distpath",
                str(out.parent),
                "--workpath",
                str(Path(work) / "build"),
                "--specpath",
                work,
                *excludes,
                str(source / "__main__.py"),
            ],
            check=True,
            cwd=work,
        )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    freeze(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
