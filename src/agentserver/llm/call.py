"""One call through the LLM proxy: reading its request, answering errors, and what it used."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentserver.llm.ledger import Ticket
from agentserver.llm.rules import Caller, Refusal, error_body
from agentserver.llm.usage import StreamUsage, Usage, parse_message

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# A non-streamed answer is kept (besides being passed on) only up to this size to read its usage.
MAX_PARSED_BODY = 8 << 20


class ClientGone(Exception):
    """The sandbox hung up before sending its whole request."""


async def read_body(receive: Receive, limit: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole request body, counted as it arrives: a lying Content-Length cannot get past."""
    declared = dict(headers).get(b"content-length", b"").strip()
    if declared.isdigit() and int(declared) > limit:
        raise Refusal(413, f"the request body is larger than {limit} bytes", reason="too_large")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body += message.get("body", b"")
        if len(body) > limit:
            raise Refusal(413, f"the request body is larger than {limit} bytes", reason="too_large")
        if not message.get("more_body"):
            return bytes(body)


async def send_error(send: Send, refusal: Refusal) -> None:
    headers = [(b"content-type", b"application/json")]
    if refusal.retry_after is not None:
        headers.append((b"retry-after", str(refusal.retry_after).encode()))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": error_body(refusal.status, refusal.message)})


@dataclass(slots=True)
class Seen:
    """What admission learnt of a call before it was refused."""

    token_hash: str | None = None
    caller: Caller | None = None
    model: str | None = None


class Call:
    """One forwarded call: its usage row, and what is learnt about it while the answer passes."""

    def __init__(self, caller: Caller, model: str | None, method: str, endpoint: str) -> None:
        self.caller = caller
        self.model = model
        self.method = method
        self.endpoint = endpoint
        self.ticket: Ticket | None = None  # its hold on the workspace's limits, if any apply
        # 499 (nginx's "client closed request") until upstream answers or is found unreachable.
        self.status = 499
        self.streaming = False
        self.created_at = datetime.now(UTC)
        self.started = time.perf_counter()
        self.stream = StreamUsage()
        self.kept = bytearray()  # a copy of a non-streamed answer, for its usage
        self.kept_all = True
        self.finished = False

    def observe(self, chunk: bytes) -> None:
        if self.streaming:
            self.stream.feed(chunk)
        elif self.kept_all:
            self.kept += chunk
            if len(self.kept) > MAX_PARSED_BODY:
                self.kept_all, self.kept = False, bytearray()

    def usage(self) -> Usage:
        if self.streaming:
            return self.stream.usage
        return parse_message(bytes(self.kept)) if self.kept_all else Usage()

    def row(self, usage: Usage) -> dict[str, Any]:
        """Its `llm_usage` row, as `llm_usage_record` takes it."""
        caller = self.caller
        return {
            "sandbox_id": caller.sandbox_id,
            "workspace_id": caller.workspace_id,
            "user_id": caller.created_by,
            "sandbox_name": caller.name,
            "method": self.method,
            "endpoint": self.endpoint,
            "model": usage.model if usage.model is not None else self.model,
            "status": self.status,
            "streaming": self.streaming,
            "duration_ms": int((time.perf_counter() - self.started) * 1000),
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
            "created_at": self.created_at,
        }
