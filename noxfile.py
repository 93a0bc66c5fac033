"""Task runner: `nox` runs what CI runs (lint, typecheck, tests)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

REPO = Path(__file__).parent
OPENCODE = REPO / ".cache/npm/node_modules/.bin/opencode"
OPENCLAW = REPO / ".cache/openclaw/node_modules/.bin/openclaw"
LOCAL_CA = Path("/usr/local/share/ca-certificates")


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
    if OPENCLAW.exists():
        env["OPENCLAW_BIN"] = str(OPENCLAW)
    return env


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, flake8-async (trio checks ruff lacks) and the import-linter layer contracts."""
    sync(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # ruff covers the other ASYNC rules; these two trio checkpoint checks are flake8-async only.
    session.run("flake8", "--select=ASYNC910,ASYNC911", "src")
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
    """Build the single-file dist/agentserver.pyz (serve + agent connect) with shiv."""
    sync(session)
    session.install("shiv")
    (REPO / "dist").mkdir(exist_ok=True)
    session.run("shiv", "-c", "agentserver", "-o", "dist/agentserver.pyz", "--reproducible", ".")
    session.run("python", "dist/agentserver.pyz", "--version")


@nox.session
def agent(session: nox.Session) -> None:
    """The agent for laptops: dist/agentserver-agent.pyz (Python 3.11+, any OS) and
    dist/agentserver-agent-linux-x86_64 (standalone, no Python needed)."""
    sync(session)
    session.install("pyinstaller")
    pyz, binary = "dist/agentserver-agent.pyz", "dist/agentserver-agent-linux-x86_64"
    session.run("python", "-m", "agentserver.agent_bundle", pyz)
    session.run("python", "scripts/freeze_agent.py", pyz, binary)
    session.run(binary, "--version", external=True)


@contextlib.contextmanager
def debian_docker(session: nox.Session) -> Iterator[tuple[dict[str, str], str]]:
    """A private dockerd with a debootstrapped Debian bookworm imported as a base image (both
    cached under .cache/image): yields the docker CLI's environment and the base's tag."""
    import subprocess
    import sys
    import tempfile

    sys.path.insert(0, str(REPO))
    from tests.support.dockerd import run_dockerd

    for tool in ("debootstrap", "dockerd", "docker"):
        if not shutil_which(tool):
            session.error(
                f"`nox -s {session.name}` needs {tool} (apt-get install debootstrap docker.io)"
            )
    cache = REPO / ".cache/image"
    cache.mkdir(parents=True, exist_ok=True)
    base_tar = cache / "bookworm-minbase.tar"
    if not base_tar.exists():
        rootfs = cache / "bookworm"
        session.run("rm", "-rf", str(rootfs), external=True)
        session.run(
            "debootstrap",
            "--variant=minbase",
            "bookworm",
            str(rootfs),
            debian_mirror(),
            external=True,
        )
        session.run("tar", "-C", str(rootfs), "-cf", str(base_tar), ".", external=True)
        session.run("rm", "-rf", str(rootfs), external=True)
    # A persistent data root keeps the built image and its layer cache between runs.
    with (
        tempfile.TemporaryDirectory(
            prefix="agentserver-dockerd-", dir="/tmp", ignore_cleanup_errors=True
        ) as tmp,
        run_dockerd(Path(tmp), data_root=cache / "docker") as daemon,
    ):
        env = {"DOCKER_HOST": daemon.host, "DOCKER_BUILDKIT": "0"}
        base = "agentserver-debian-base:bookworm"
        # Import once: a re-import is a new image, which would void the build cache.
        present = (
            subprocess.run(
                ["docker", "image", "inspect", base],
                env={**os.environ, **env},
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
        if not present:
            session.run("docker", "import", str(base_tar), base, env=env, external=True)
        yield env, base


def extra_ca_certs() -> str:
    """Extra CAs this host trusts (a TLS-intercepting proxy), for downloads during builds."""
    return "".join(p.read_text() for p in sorted(LOCAL_CA.glob("*.crt")))


@nox.session(venv_backend="none")
def image(session: nox.Session) -> None:
    """Build the sandbox image on a debootstrapped Debian base and check each toolchain runs;
    then the server image on the same base (`agentserver --version` in it)."""
    import time

    started = time.monotonic()
    tag = "agentserver-agent:latest"
    with debian_docker(session) as (env, base):
        build_started = time.monotonic()
        # The private daemon has no bridge/NAT: RUN steps use the host's network.
        extra_ca = extra_ca_certs()
        session.run(
            "docker",
            "build",
            "--network",
            "host",
            "--build-arg",
            f"BASE={base}",
            "--build-arg",
            f"BUILD_CA_CERTS={extra_ca}",
            "-f",
            str(REPO / "container/sandbox.Dockerfile"),
            "-t",
            tag,
            str(REPO / "container"),
            env=env,
            external=True,
        )
        build_seconds = time.monotonic() - build_started
        checks = [
            "go version",
            "rustc --version",
            "cargo --version",
            "cc --version",
            "c++ --version",
            "clang --version",
            "node --version",
            "npm --version",
            "python3 --version",
            "git --version",
            "rg --version",
            "curl --version",
            "opencode --version",
            "id -u",
            "test -d /data/disk0 -a -w /data/disk0",
        ]
        for check in checks:
            session.run(
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "sh",
                tag,
                "-c",
                check,
                env=env,
                external=True,
            )
        size = session.run(
            "docker",
            "image",
            "inspect",
            "-f",
            "{{.Size}}",
            tag,
            env=env,
            external=True,
            silent=True,
        )
        session.log(
            f"{tag}: {int(str(size).strip()) / 1e9:.2f} GB; docker build "
            f"{build_seconds:.0f}s, total {time.monotonic() - started:.0f}s"
        )
        build_server_image(session, env, base)


def build_server_image(session: nox.Session, env: dict[str, str], base: str) -> None:
    """Build the server image (container/server.Dockerfile) on `base` and run
    `agentserver --version` in it, as its non-root user and without a network."""
    init = (REPO / "src/agentserver/__init__.py").read_text()
    version = re.search(r'__version__ = "([^"]+)"', init)
    assert version is not None
    wanted = version.group(1)
    tag = "agentserver:latest"
    session.run(
        "docker",
        "build",
        "--network",
        "host",
        "--build-arg",
        f"PYTHON={base}",
        "--build-arg",
        f"BUILD_CA_CERTS={extra_ca_certs()}",
        "-f",
        str(REPO / "container/server.Dockerfile"),
        "-t",
        tag,
        str(REPO),
        env=env,
        external=True,
    )
    shown = session.run(
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        tag,
        "--version",
        env=env,
        external=True,
        silent=True,
    )
    if str(shown).strip() != wanted:
        session.error(f"{tag} says {str(shown).strip()!r}, not {wanted}")
    user = session.run(
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "id",
        tag,
        "-u",
        env=env,
        external=True,
        silent=True,
    )
    if str(user).strip() != "10001":
        session.error(f"{tag} runs as uid {str(user).strip()}, not 10001")
    session.log(f"{tag}: agentserver {wanted}, uid 10001")


@nox.session(venv_backend="none")
def server_image(session: nox.Session) -> None:
    """Only the server image (`nox -s image` builds it too, after the sandbox image)."""
    with debian_docker(session) as (env, base):
        build_server_image(session, env, base)


def shutil_which(tool: str) -> str | None:
    import shutil

    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def debian_mirror() -> str:
    """The host's Debian mirror (deb822 or one-line sources), else deb.debian.org."""
    import re

    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        text = source.read_text() if source.is_file() else ""
        match = re.search(r"(?:URIs:|^deb)\s+(\S+/debian)\s*$", text, re.MULTILINE) or re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s", text, re.MULTILINE
        )
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"
