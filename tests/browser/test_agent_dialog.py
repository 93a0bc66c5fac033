"""The agent dialog end to end: its steps, a real `agent connect` and opencode, the check mark."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from agentserver import __version__
from tests.browser.conftest import LiveServer, Tour
from tests.browser.test_web_ui import api_workspace, sign_in, status_of
from tests.conftest import REPO
from tests.support.tunnel_world import free_port


@pytest.fixture
def laptop_opencode(opencode_bin: str, tmp_path: Path) -> Iterator[str]:
    """`opencode serve` on loopback, as the dialog's second step starts it on a laptop."""
    port = free_port()
    home = tmp_path / "laptop-home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "TERM": "xterm",
    }
    process = subprocess.Popen(
        [opencode_bin, "serve", "--hostname", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=home,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:  # blocks until opencode says it listens (or exits)
            seen.append(line.decode(errors="replace"))
            if "listening" in seen[-1]:
                break
        else:
            raise AssertionError(f"opencode exited: {seen}")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.browser
@pytest.mark.opencode
def test_the_agent_dialog_turns_connected_when_its_command_runs(
    live_server: LiveServer,
    tour_factory: Callable[..., Tour],
    laptop_opencode: str,
    tmp_path: Path,
) -> None:
    """The dialog shows how to install the agent and start opencode; running its command (a
    real agent, a real opencode) makes it show a check mark and "Connected", live."""
    with closing(live_server.register("dev")) as dev:
        wid = api_workspace(dev, "Laptops")
    tour = tour_factory(live_server.url, viewport={"width": 1280, "height": 900})
    sign_in(tour, "dev")
    page = tour.page
    page.goto(f"{live_server.url}/w/{wid}")
    expect(page.get_by_text("Live", exact=True)).to_be_visible()
    page.get_by_role("button", name="Connect a local agent").click()
    dialog = page.get_by_role("dialog", name="Connect a local agent")
    # Step 1: the agent file from this server (pip as the alternative); step 2: opencode.
    download = dialog.locator("#download-command").text_content() or ""
    assert download == f"curl -fLO {live_server.url}/download/agentserver-agent.pyz"
    expect(dialog.get_by_text(f"pip install agentserver=={__version__}")).to_be_visible()
    expect(dialog.locator("#opencode-command")).to_have_text("opencode serve --port 4096")
    name = dialog.get_by_label("Name of this machine")
    expect(name).to_have_attribute("placeholder", "this machine's host name")
    name.fill("laptop-1")
    expect(dialog.get_by_text("Waiting for the agent to connect…")).to_be_visible()
    words = shlex.split(dialog.locator("#agent-command").text_content() or "")
    assert words[:4] == ["python3", "agentserver-agent.pyz", "agent", "connect"]
    assert words[-2:] == ["--name", "laptop-1"]
    # The laptop: the file the download command fetches, run by a Python without the project.
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    (laptop / words[1]).write_bytes(httpx.get(download.split()[-1], timeout=60).content)
    python = getattr(sys, "_base_executable", sys.executable)
    command = [
        python,
        "-I",
        "-S",
        *words[1:],
        "--config",
        str(tmp_path / "agent.json"),
        "--opencode-url",
        laptop_opencode,
    ]
    agent = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=laptop,
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        joined = dialog.locator(".joined .connected")
        expect(joined).to_be_visible(timeout=60_000)
        expect(joined).to_contain_text("✓")
        expect(joined).to_contain_text("Connected: laptop-1")
        expect(dialog.locator(".joined .reason")).to_have_count(0)  # opencode answers
        tour.shot("agent-connected")
        dialog.get_by_role("button", name="Close").click()
        expect(dialog).to_have_count(0)
        expect(status_of(page, "laptop-1")).to_have_attribute("data-status", "running")
    finally:
        agent.terminate()
        # Shown by pytest when the test fails.
        print(agent.communicate(timeout=30)[0].decode(errors="replace"))


@pytest.mark.browser
def test_the_agent_dialog_says_when_opencode_is_not_answering(
    live_server: LiveServer, tour_factory: Callable[..., Tour], tmp_path: Path
) -> None:
    """An agent that connects while nothing listens at its opencode URL: the dialog shows it
    connected, and says opencode is not answering there; so does the sandbox's row."""
    with closing(live_server.register("dev")) as dev:
        wid = api_workspace(dev, "Laptops")
    tour = tour_factory(live_server.url, viewport={"width": 1280, "height": 900})
    sign_in(tour, "dev")
    page = tour.page
    page.goto(f"{live_server.url}/w/{wid}")
    expect(page.get_by_text("Live", exact=True)).to_be_visible()
    page.get_by_role("button", name="Connect a local agent").click()
    dialog = page.get_by_role("dialog", name="Connect a local agent")
    dialog.get_by_label("Name of this machine").fill("laptop-2")
    words = shlex.split(dialog.locator("#agent-command").text_content() or "")
    port = free_port()  # nothing listens there
    config = ["--config", str(tmp_path / "agent.json")]
    command = [str(REPO / ".venv/bin/agentserver"), *words[2:], *config]
    command += ["--opencode-url", f"http://127.0.0.1:{port}"]
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        connected = dialog.locator(".joined .connected")
        expect(connected).to_contain_text("Connected: laptop-2", timeout=60_000)
        reason = f"opencode is not answering on 127.0.0.1:{port}"
        expect(dialog.locator(".joined .reason")).to_contain_text(reason, timeout=60_000)
        tour.shot("opencode-not-answering")
        dialog.get_by_role("button", name="Close").click()
        expect(page.locator('[data-sandbox="laptop-2"] .reason')).to_have_text(reason)
    finally:
        agent.terminate()
        print(agent.communicate(timeout=30)[0].decode(errors="replace"))
