"""A bug in a long-lived server task is logged and the task starts again; the server lives on."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.conftest import make_settings, start_server


class FailsOnce:
    """Stands in for the lifecycle service inside a watcher: its first call hits a bug (an
    exception no handler expects), later ones answer normally and are signalled."""

    def __init__(self) -> None:
        self.calls = 0
        self.called_again = trio.Event()

    def _call(self) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in an iteration")
        self.called_again.set()

    async def pause_idle(self, seconds: float) -> float | None:
        await trio.lowlevel.checkpoint()
        self._call()
        return None

    async def reconcile(self, *, at_start: bool = False) -> None:
        await trio.lowlevel.checkpoint()
        self._call()


@pytest.mark.parametrize("task", ["idle_watcher", "reconciler"])
async def test_a_bug_in_a_watcher_is_logged_and_retried_and_the_server_lives_on(
    nursery: trio.Nursery,
    db_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    task: str,
) -> None:
    """When the idle watcher's or the reconciler's iteration raises, the failure is logged with
    its traceback, the task runs again, and the server keeps answering."""
    settings = make_settings(db_url, tmp_path / "data", idle_timeout="1h")
    server = await start_server(nursery, settings)
    watcher = getattr(server.deps, task)
    flaky = FailsOnce()
    watcher.sandboxes = flaky
    watcher.poke()
    with trio.fail_after(30):
        await flaky.called_again.wait()
    assert flaky.calls == 2
    logged = [r for r in caplog.records if r.name == "agentserver.supervise"]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert "a bug in an iteration" in str(logged[0].exc_info[1])
    async with server.client() as client:
        assert (await client.get("/healthz")).status_code == 200
    server.shutdown.set()
