"""Task runner: `nox` runs what CI runs (lint, typecheck, tests)."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

REPO = Path(__file__).parent
OPENCODE = REPO / ".cache/npm/node_modules/.bin/opencode"


def sync(session: nox.Session, *groups: str) -> None:
    """Install the locked dependencies (and the given groups) into the session's venv."""
    args = ["uv", "sync", "--frozen", "--quiet"]
    for group in groups:
        args += ["--group", group]
    session.run_install(*args, env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location})


def test_env() -> dict[str, str]:
    env = {}
    if OPENCODE.exists():
        env["OPENCODE_BIN"] = str(OPENCODE)
    return env


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, flake8-async (trio checks ruff lacks) and the import-linter layer contracts."""
    sync(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("flake8", "--select=ASYNC", "--enable=ASYNC910,ASYNC911", "src")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    sync(session, "lint", "test")
    session.run("mypy", "--strict", "src/agentserver")


@nox.session
def tests(session: nox.Session) -> None:
    """Every test: unit, integration, browser and Docker (skipped with a reason if impossible)."""
    sync(session, "test")
    os.makedirs(REPO / "artifacts", exist_ok=True)
    session.run("pytest", *session.posargs, env=test_env())


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: print ratios against baselines measured in the same run."""
    sync(session, "test")
    for script in sorted((REPO / "bench").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs, env=test_env())


@nox.session
def zipapp(session: nox.Session) -> None:
    """Build the single-file agentserver.pyz with shiv."""
    sync(session)
    session.install("shiv")
    session.run("shiv", "-c", "agentserver", "-o", "dist/agentserver.pyz", "--reproducible", ".")
