"""Process sandboxes' networks at run time: each running sandbox's namespace and LLM relay.

A sandbox's network is made just before its agent starts and removed once the agent is gone
(paused, destroyed, crashed, or the server stopping): its namespace and veth pair (netns.py),
and its LLM relay (llm_relay.py), a task in the backend's nursery.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from agentserver.errors import BackendError
from agentserver.sandboxes import llm_relay
from agentserver.sandboxes.llm_relay import Upstream
from agentserver.sandboxes.netns import NETNS_DIR, Plumbing
from agentserver.sandboxes.subnet import Slot, namespace_name

log = logging.getLogger(__name__)
CLEANUP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class SandboxNet:
    """One running sandbox's network: its /30 and its relay (where the LLM proxy is reached)."""

    sandbox_id: str
    slot: Slot
    relay: trio.CancelScope | None
    relay_port: int | None

    @property
    def address(self) -> str:
        """The sandbox's own address: its agent and previews are reached there."""
        return self.slot.sandbox_address

    @property
    def namespace(self) -> Path:
        return NETNS_DIR / namespace_name(self.sandbox_id)

    def open_namespace(self) -> int:
        """A descriptor of the namespace, for the agent's process to join (child.py)."""
        return os.open(self.namespace, os.O_RDONLY | os.O_CLOEXEC)


class Networks:
    """The networks of the sandboxes running now, by sandbox id."""

    def __init__(self, plumbing: Plumbing, nursery: trio.Nursery, llm_url: str) -> None:
        self.plumbing = plumbing
        self._nursery = nursery
        self._upstream = Upstream.of_url(llm_url)
        self._nets: dict[str, SandboxNet] = {}

    def get(self, sandbox_id: str) -> SandboxNet | None:
        return self._nets.get(sandbox_id)

    def llm_base_url(self, net: SandboxNet, configured: str) -> str:
        """Where the sandbox's agent calls the LLM proxy: its relay (or the configured URL
        where that is not the server's own plain HTTP listener)."""
        if self._upstream is None or net.relay_port is None:
            return configured
        return f"http://{net.slot.host_address}:{net.relay_port}{self._upstream.prefix}"

    async def open(self, sandbox_id: str) -> SandboxNet:
        """Make the sandbox's namespace and start its relay (a leftover is replaced)."""
        await self.release(sandbox_id)
        slot = await trio.to_thread.run_sync(self.plumbing.create, sandbox_id)
        net = SandboxNet(sandbox_id, slot, None, None)
        self._nets[sandbox_id] = net
        try:
            if self._upstream is not None:
                scope, port = await self._nursery.start(self._relay, slot.host_address)
                net = SandboxNet(sandbox_id, slot, scope, port)
                self._nets[sandbox_id] = net
                await trio.to_thread.run_sync(
                    lambda: self.plumbing.allow_relay(slot, port, allowed=True)
                )
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.release(sandbox_id)
            raise
        return net

    async def _relay(
        self,
        address: str,
        task_status: trio.TaskStatus[tuple[trio.CancelScope, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                assert self._upstream is not None
                port = await nursery.start(llm_relay.serve, address, self._upstream)
                task_status.started((scope, port))

    async def release(self, sandbox_id: str) -> None:
        """Stop the sandbox's relay and remove its namespace (nothing to do is fine)."""
        await trio.lowlevel.checkpoint()
        net = self._nets.pop(sandbox_id, None)
        if net is None:
            return
        if net.relay is not None:
            net.relay.cancel()
        with trio.move_on_after(CLEANUP_TIMEOUT):
            try:
                await trio.to_thread.run_sync(self._remove, net)
            except (BackendError, OSError) as exc:
                log.warning("sandbox %s: cannot remove its network: %s", sandbox_id, exc)

    def _remove(self, net: SandboxNet) -> None:
        if net.relay_port is not None:
            self.plumbing.allow_relay(net.slot, net.relay_port, allowed=False)
        self.plumbing.remove(net.sandbox_id)

    async def aclose(self) -> None:
        """Remove every network (server shutdown, after the agents stopped)."""
        await trio.lowlevel.checkpoint()
        for sandbox_id in list(self._nets):
            await self.release(sandbox_id)
