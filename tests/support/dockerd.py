"""A private Docker daemon (tests, `nox -s image`) and a test sandbox image made from the host."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import random
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
TEST_IMAGE = "agentserver-test-agent:latest"
OPENCODE_CMD = '["opencode","serve","--hostname","0.0.0.0","--port","4096"]'


class DaemonUnavailable(Exception):
    """dockerd cannot run here; the message says why."""


@dataclass(frozen=True)
class Daemon:
    """A running dockerd: where it listens and where it logs."""

    host: str
    socket: Path
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(str(self.path))
        self.sock = sock


def ping(path: Path) -> bool:
    """Whether the daemon at this socket answers `/_ping`."""
    conn = _UnixConnection(path)
    try:
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _pump(stream: object, log: Path, ready: threading.Event, sock: Path) -> None:
    """Copy the daemon's output to its log; `ready` is set at its 'API listen on' line."""
    with log.open("a") as out:
        for line in stream:  # type: ignore[attr-defined]
            out.write(line)
            out.flush()
            if "API listen on" in line and str(sock) in line:
                ready.set()
    ready.set()  # the daemon exited: wake the waiter so it can report


@contextlib.contextmanager
def run_dockerd(base: Path, data_root: Path | None = None) -> Iterator[Daemon]:
    """Start dockerd with everything under `base`; stop it (by its pid) on exit."""
    binary = shutil.which("dockerd")
    if binary is None:
        raise DaemonUnavailable("no dockerd binary (install Debian's docker.io)")
    if os.geteuid() != 0:
        raise DaemonUnavailable("dockerd needs root and the tests do not run as root")
    sock, log = base / "docker.sock", base / "dockerd.log"
    # Each daemon gets its own address pool so two daemons on one host never share a subnet.
    pool = f"base=10.{random.randrange(64, 250)}.0.0/16,size=24"
    args = [
        binary,
        "--iptables=false",
        "--ip-masq=false",
        "--bridge=none",
        "--data-root",
        str(data_root or base / "data"),
        "--exec-root",
        str(base / "exec"),
        "--pidfile",
        str(base / "dockerd.pid"),
        "--host",
        f"unix://{sock}",
        "--default-address-pool",
        pool,
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    ready = threading.Event()
    pump = threading.Thread(target=_pump, args=(proc.stdout, log, ready, sock), daemon=True)
    pump.start()
    daemon = Daemon(host=f"unix://{sock}", socket=sock, log=log)
    try:
        if not ready.wait(START_TIMEOUT) or proc.poll() is not None or not ping(sock):
            raise DaemonUnavailable(f"dockerd did not start:\n{daemon.log_tail()}")
        yield daemon
    finally:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pump.join(STOP_TIMEOUT)
        _unmount_below(base)


def _unmount_below(base: Path) -> None:
    """Detach what dockerd left mounted under `base` (its network namespace files)."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    for point in sorted({line.split()[1] for line in mounts}, reverse=True):
        if point.startswith(f"{base}/"):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def opencode_elf() -> Path | None:
    """The real opencode ELF the npm package installed (not its Node launcher)."""
    repo = Path(__file__).resolve().parents[2]
    candidate = repo / ".cache/npm/node_modules/opencode-linux-x64/bin/opencode"
    return candidate if candidate.is_file() else None


def _libraries(binary: Path) -> list[Path]:
    """The shared libraries and loader `binary` needs, from `ldd`."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    return [Path(w) for line in out.splitlines() for w in line.split() if w.startswith("/")]


def _add_dir(tar: tarfile.TarFile, name: str, uid: int = 0, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, uid
    tar.addfile(info)


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    _add_file(tar, name, text.encode())


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, uid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid = len(data), 0o644, uid, uid
    tar.addfile(info, io.BytesIO(data))


# Where opencode keeps its database, under its HOME.
OPENCODE_DATABASE = ".local/share/opencode/opencode.db"


def opencode_database(opencode: Path) -> bytes:
    """An empty opencode database with its schema made: what opencode's first start would make
    (about a tenth of that start's CPU), so a fresh home volume starts with it (Docker copies
    the image's /home/agent into a new volume). Checkpointed into one file."""
    with tempfile.TemporaryDirectory(prefix="agentserver-opencode-home-") as home:
        subprocess.run(
            [str(opencode), "db", "PRAGMA wal_checkpoint(TRUNCATE)"],
            env={"HOME": home, "PATH": "/usr/bin:/bin"},
            cwd=home,
            capture_output=True,
            check=True,
            timeout=120,
        )
        return (Path(home) / OPENCODE_DATABASE).read_bytes()


def write_rootfs(path: Path, opencode: Path) -> None:
    """A minimal root filesystem: busybox, the host's glibc, opencode, user `agent` (1000)
    whose home holds opencode's database, made (`opencode_database`)."""
    busybox = Path("/bin/busybox")
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    with tarfile.open(path, "w") as tar:
        for name in (
            "bin",
            "etc",
            "lib",
            "lib64",
            "usr",
            "usr/local",
            "usr/local/bin",
            "root",
            "data",
            "home",
            "proc",
            "sys",
            "dev",
        ):
            _add_dir(tar, name)
        _add_dir(tar, "tmp", mode=0o1777)
        _add_dir(tar, "home/agent", uid=1000)
        database = PurePosixPath("home/agent", OPENCODE_DATABASE)
        for parent in list(database.parents)[::-1][3:]:  # below home/agent
            _add_dir(tar, str(parent), uid=1000)
        _add_file(tar, str(database), opencode_database(opencode), uid=1000)
        _add_dir(tar, "data/disk0", uid=1000)
        tar.add(busybox, "bin/busybox")
        for applet in applets:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            if applet != "busybox":
                tar.addfile(link)
        for lib in _libraries(opencode):
            for parent in [*list(lib.parent.parents)[::-1][1:], lib.parent]:
                if str(parent).lstrip("/") not in tar.getnames():
                    _add_dir(tar, str(parent).lstrip("/"))
            tar.add(lib.resolve(), str(lib).lstrip("/"))
        tar.add(opencode, "usr/local/bin/opencode")
        users = "root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/home/agent:/bin/sh\n"
        _add_text(tar, "etc/passwd", users)
        _add_text(tar, "etc/group", "root:x:0:\nagent:x:1000:\n")
        _add_text(tar, "etc/hosts", "127.0.0.1 localhost\n")


def import_test_image(daemon: Daemon, opencode: Path, tag: str = TEST_IMAGE) -> str:
    """`docker import` the host-made root filesystem as a sandbox image running opencode."""
    import docker

    with tempfile.TemporaryDirectory(prefix="agentserver-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        write_rootfs(rootfs, opencode)
        client = docker.DockerClient(base_url=daemon.host)
        try:
            repository, _, version = tag.partition(":")
            client.api.import_image_from_file(
                str(rootfs),
                repository=repository,
                tag=version or "latest",
                changes=[
                    "USER agent",
                    "WORKDIR /home/agent",
                    "ENV HOME=/home/agent PATH=/usr/local/bin:/bin",
                    "ENV OPENCODE_DISABLE_MODELS_FETCH=1",
                    f"CMD {OPENCODE_CMD}",
                    "EXPOSE 4096",
                ],
            )
        finally:
            client.close()
    return tag


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Daemon]:
    """A real Docker daemon for the session (DOCKER_HOST set), or every Docker test skips."""
    base = Path(tempfile.mkdtemp(prefix="agentserver-dockerd-", dir="/tmp"))
    previous = os.environ.get("DOCKER_HOST")
    try:
        with run_dockerd(base) as daemon:
            os.environ["DOCKER_HOST"] = daemon.host
            try:
                yield daemon
            finally:
                if previous is None:
                    os.environ.pop("DOCKER_HOST", None)
                else:
                    os.environ["DOCKER_HOST"] = previous
    except DaemonUnavailable as exc:
        pytest.skip(f"Docker tests need a Docker daemon: {exc}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def agent_image(dockerd: Daemon) -> str:
    """The test sandbox image: opencode on busybox and the host's glibc, via `docker import`."""
    opencode = opencode_elf()
    if opencode is None:
        pytest.skip("the opencode-linux-x64 npm package is not installed (run scripts/test)")
    started = time.monotonic()
    tag = import_test_image(dockerd, opencode)
    print(f"test image {tag} imported in {time.monotonic() - started:.1f}s")
    return tag
