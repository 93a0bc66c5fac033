"""The proxy tokens this replica has seen: token hash → sandbox, kept until a change notice (pure).

A token's sandbox, workspace and limit overrides are read from the database once and then
served from memory. What could make an entry wrong is announced (db/notify.py): a sandbox that
changes status, token, name, owner or workspace, or is deleted (`forget_sandbox`); a workspace
whose limits change (`forget_workspace`); a gap in the notices (`reset`). Entries also expire
after `ttl`, a backstop only. While notices are not flowing (`live()` is False) nothing is
served from memory at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agentserver.llm.rules import Caller


class CallerCache:
    """Active callers by token hash, forgotten at once when a change notice names them."""

    def __init__(
        self, ttl: float = 300.0, size: int = 4096, live: Callable[[], bool] = lambda: True
    ) -> None:
        self.ttl = ttl
        self.size = size
        self.live = live
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._by_sandbox: dict[str, set[str]] = {}
        self._by_workspace: dict[str, set[str]] = {}
        # Callers forgotten because their sandbox changed, so a token that stopped working is
        # counted as revoked under its sandbox (bounded: the oldest goes first).
        self._former: dict[str, Caller] = {}
        # Bumped by every forgetting: a look-up that started before one may have read what it
        # announced as changed, so its answer is not kept (see `put`).
        self.epoch = 0

    def get(self, token_hash: str) -> Caller | None:
        found = self._entries.get(token_hash)
        if found is None or not self.live():
            return None
        if found[0] < time.monotonic():
            self.forget(token_hash)
            return None
        return found[1]

    def put(self, token_hash: str, caller: Caller, epoch: int | None = None) -> None:
        """Keep `caller`, unless something was forgotten since `epoch` (when the look-up began)
        or notices are not flowing: either way the answer may already be out of date."""
        if (epoch is not None and epoch != self.epoch) or not self.live():
            return
        self.forget(token_hash)
        if len(self._entries) >= self.size:
            self.clear()  # simplest bound; the next calls just look up again
        self._entries[token_hash] = (time.monotonic() + self.ttl, caller)
        self._by_sandbox.setdefault(caller.sandbox_id, set()).add(token_hash)
        self._by_workspace.setdefault(caller.workspace_id, set()).add(token_hash)

    def forget(self, token_hash: str) -> None:
        self.epoch += 1
        found = self._entries.pop(token_hash, None)
        if found is None:
            return
        caller = found[1]
        for index, key in (
            (self._by_sandbox, caller.sandbox_id),
            (self._by_workspace, caller.workspace_id),
        ):
            hashes = index.get(key)
            if hashes is not None:
                hashes.discard(token_hash)
                if not hashes:
                    del index[key]

    def forget_sandbox(self, sandbox_id: str) -> None:
        self.epoch += 1
        for token_hash in list(self._by_sandbox.get(sandbox_id, ())):
            found = self._entries.get(token_hash)
            if found is not None:
                self._former.pop(token_hash, None)
                while len(self._former) >= self.size:
                    del self._former[next(iter(self._former))]
                self._former[token_hash] = found[1]
            self.forget(token_hash)

    def former(self, token_hash: str) -> Caller | None:
        """The caller a token belonged to before a change notice made it be forgotten."""
        return self._former.get(token_hash)

    def forget_workspace(self, workspace_id: str) -> None:
        self.epoch += 1
        for token_hash in list(self._by_workspace.get(workspace_id, ())):
            self.forget(token_hash)

    def clear(self) -> None:
        self.epoch += 1
        self._entries.clear()
        self._by_sandbox.clear()
        self._by_workspace.clear()

    def __len__(self) -> int:
        return len(self._entries)
