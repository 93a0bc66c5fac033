"""The HTTP/1.1 shell around `Rest`: a threading server on 127.0.0.1, chunked watch streams."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.support.kube_api.rest import Reply, Request, Rest


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the calls are recorded by `Rest`."""

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=url.path,
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            content_type=self.headers.get("Content-Type", ""),
            body=body,
            authorization=self.headers.get("Authorization", ""),
        )
        reply = self.server.rest.handle(request)
        if reply.stream is not None:
            self._send_stream(reply)
        else:
            self._send_json(reply)

    def _send_json(self, reply: Reply) -> None:
        if reply.text is not None:
            data, content_type = reply.text.encode(), "text/plain"
        else:
            data, content_type = json.dumps(reply.body).encode(), "application/json"
        self.send_response(reply.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for warning in reply.warnings:
            escaped = warning.replace("\\", "\\\\").replace('"', '\\"')
            self.send_header("Warning", f'299 - "{escaped}"')
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, reply: Reply) -> None:
        assert reply.stream is not None
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        lines = reply.stream
        try:
            for line in lines:
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client went away mid-watch
        finally:
            close = getattr(lines, "close", None)
            if close is not None:
                close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class ApiHttpServer(ThreadingHTTPServer):
    """One thread per connection; `close()` ends open connections so every thread is joined."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, rest: Rest, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.rest = rest
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def start(self) -> None:
        """Serve in a thread; the socket is bound and listening already, so it is ready now."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="kube-api-http", kwargs={"poll_interval": 0.05}
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, drop open (keep-alive or watch) connections, join every thread."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self.server_close()
