"""A dev server as a sandbox would run one (standard library only, run as `python3 -c`).

`python3 preview_app.py NAME PORT [HOST]` listens on PORT of HOST (every address by default)
and answers
`GET /hello` with `hello from NAME`, `GET /events` with three server-sent events, and
`GET /echo` (a WebSocket upgrade) by echoing text messages; it prints `ready` once listening.
Probes: `--connect HOST PORT` prints `connected` or why not; `--get URL` prints the status of a
GET (or why there is none).
"""

import base64
import hashlib
import socket
import struct
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class App(BaseHTTPRequestHandler):
    name = "?"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/hello":
            body = f"hello from {self.name}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/events":
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            for n in range(3):
                self.wfile.write(f"data: {self.name} {n}\n\n".encode())
                self.wfile.flush()
            self.close_connection = True
        elif self.path == "/echo":
            self.echo()
        else:
            self.send_error(404)

    def echo(self) -> None:
        key = self.headers["sec-websocket-key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()  # noqa: S324
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            first, second = self.rfile.read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self.rfile.read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self.rfile.read(8))
            mask = self.rfile.read(4) if second & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:  # close: answer it and stop
                self.wfile.write(b"\x88\x00")
                return
            if opcode == 1:
                size = struct.pack("!BH", 126, len(data)) if len(data) > 125 else bytes([len(data)])
                self.wfile.write(b"\x81" + size + data)
                self.wfile.flush()


def connect(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=3):
            print("connected", flush=True)
    except OSError as exc:
        print(f"not connected: {exc}", flush=True)


def get(url: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (a test's URL)
            print(answer.status, flush=True)
    except urllib.error.HTTPError as exc:
        print(exc.code, flush=True)
    except OSError as exc:
        print(f"no answer: {exc}", flush=True)


def main() -> None:
    if sys.argv[1] == "--connect":
        connect(sys.argv[2], int(sys.argv[3]))
        return
    if sys.argv[1] == "--get":
        get(sys.argv[2])
        return
    App.name = sys.argv[1]
    host = sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0"
    server = ThreadingHTTPServer((host, int(sys.argv[2])), App)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
