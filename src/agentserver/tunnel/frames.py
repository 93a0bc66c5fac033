"""Tunnel frames: the frame types and their bytes encoding, with strict validation of input.

Every tunnel message (one binary WebSocket message) is::

    [u32 big-endian length N of the JSON header][N bytes UTF-8 JSON header][raw payload]

The header is a JSON object whose ``"type"`` says which frame it is; only ``Data`` frames carry a
payload. Keys are short but readable::

    hello     {"version", "max_payload", "window", "ping",       negotiates limits (first frame)
               "streams"?, "batch"?}
    request   {"id", "method", "target", "headers", "body", "ws", "protocols",
               "port"?}                                         "port": a preview's port
    response  {"id", "status", "headers"}
    data      {"id", "text"?, "more"?}  + payload               body bytes or a WebSocket fragment
    end       {"id", "code"?, "reason"?}                        half-close (WebSocket close code)
    window    {"id", "inc"}                                     grant receive credit
    reset     {"id", "code", "message"}                         abort a stream (cancel, errors)
    ping/pong {"opaque"}
    goaway    {"code", "message"}                               no new streams; closing soon

Headers are ordered ``[name, value]`` pairs so multi-valued headers survive. `decode` raises
`ProtocolError` for every malformed input and never any other exception.

A side whose Hello says ``"batch": true`` also takes several frames in one message (a batch,
`messages.pack`/`messages.unpack`). On byte streams (not message-oriented), each message is
additionally prefixed with its u32 length (`messages.frame_message`).
"""

from __future__ import annotations

import json
import json.encoder
import json.scanner
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

VERSION: Final = 1
DEFAULT_MAX_PAYLOAD: Final = 16 * 1024
MIN_MAX_PAYLOAD: Final = 1024
MAX_MAX_PAYLOAD: Final = 16 * 1024 * 1024
MAX_HEADER: Final = 64 * 1024
MAX_STREAM_ID: Final = 2**31 - 1
MAX_WINDOW: Final = 2**31 - 1
MAX_OPAQUE: Final = 2**63 - 1
MAX_PING_INTERVAL: Final = 86400.0

_LEN = 4
_PLAIN_DATA = b'{"type":"data","id":'
_PLAIN_END = b'{"type":"end","id":'
_PLAIN_WINDOW = re.compile(rb'\{"type":"window","id":([1-9][0-9]{0,9}),"inc":([1-9][0-9]{0,9})\}')
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
_BAD_VALUE_CHARS = re.compile(r"[\r\n\x00]")
_SPACE = re.compile(r"\s")

Headers = tuple[tuple[str, str], ...]


# json.dumps/json.loads build an encoder or walk several Python layers on every call; a head
# is written and read on every request, so the C encoder and scanner are made once and called
# directly (the same output and the same acceptance as json.dumps(separators=(",", ":")) and
# json.loads: anything but exactly one value, such as padding, takes json.loads itself).
def _json_encoder() -> Callable[[object], str]:
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator
        return json.JSONEncoder(separators=(",", ":")).encode
    default = json.JSONEncoder().default  # its TypeError names what cannot be encoded
    ascii_text = json.encoder.encode_basestring_ascii
    encode = make(None, default, ascii_text, None, ":", ",", False, False, True)
    return lambda value: "".join(encode(value, 0))


_ENCODE = _json_encoder()
_MAKE_SCANNER: Any = json.scanner.make_scanner  # (typeshed types it as a class of itself)
_SCAN: Callable[[str, int], tuple[Any, int]] = _MAKE_SCANNER(json.JSONDecoder())


def _loads(text: str) -> Any:
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:  # no value at the very start: json.loads says what it is
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid tunnel frame, or broke the protocol."""


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    max_frame_payload: int
    initial_window: int
    ping_interval: float
    max_streams: int | None = None  # how many of the peer's streams we take at once (optional)
    batch: bool = False  # takes messages carrying several frames (optional; older peers do not)


@dataclass(frozen=True, slots=True)
class RequestOpen:
    stream_id: int
    method: str
    target: str
    headers: Headers = ()
    body: bool = True
    websocket: bool = False
    subprotocols: tuple[str, ...] = ()
    # A preview: the port on the agent's machine the request is for (None: its opencode).
    # Optional on the wire, so a request without it reads as it always did.
    port: int | None = None


@dataclass(frozen=True, slots=True)
class ResponseHead:
    stream_id: int
    status: int
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class Data:
    stream_id: int
    payload: bytes
    text: bool = False
    more: bool = False


@dataclass(frozen=True, slots=True)
class End:
    stream_id: int
    code: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Window:
    stream_id: int
    increment: int


@dataclass(frozen=True, slots=True)
class Reset:
    stream_id: int
    code: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Ping:
    opaque: int


@dataclass(frozen=True, slots=True)
class Pong:
    opaque: int


@dataclass(frozen=True, slots=True)
class GoAway:
    code: str
    message: str = ""


Frame = Hello | RequestOpen | ResponseHead | Data | End | Window | Reset | Ping | Pong | GoAway


def _header_of(frame: Frame) -> dict[str, Any]:
    match frame:
        case Hello():
            hello: dict[str, Any] = {
                "type": "hello",
                "version": frame.version,
                "max_payload": frame.max_frame_payload,
                "window": frame.initial_window,
                "ping": frame.ping_interval,
            }
            if frame.max_streams is not None:  # older peers neither send nor read it
                hello["streams"] = frame.max_streams
            if frame.batch:  # likewise
                hello["batch"] = True
            return hello
        case RequestOpen():
            request: dict[str, Any] = {
                "type": "request",
                "id": frame.stream_id,
                "method": frame.method,
                "target": frame.target,
                "headers": frame.headers,  # tuples: JSON arrays all the same
                "body": frame.body,
                "ws": frame.websocket,
                "protocols": frame.subprotocols,
            }
            if frame.port is not None:  # only previews carry it
                request["port"] = frame.port
            return request
        case ResponseHead():
            return {
                "type": "response",
                "id": frame.stream_id,
                "status": frame.status,
                "headers": frame.headers,
            }
        case Data():
            header: dict[str, Any] = {"type": "data", "id": frame.stream_id}
            if frame.text:
                header["text"] = True
            if frame.more:
                header["more"] = True
            return header
        case End():
            header = {"type": "end", "id": frame.stream_id}
            if frame.code is not None:
                header["code"] = frame.code
            if frame.reason:
                header["reason"] = frame.reason
            return header
        case Window():
            return {"type": "window", "id": frame.stream_id, "inc": frame.increment}
        case Reset():
            return {
                "type": "reset",
                "id": frame.stream_id,
                "code": frame.code,
                "message": frame.message,
            }
        case Ping():
            return {"type": "ping", "opaque": frame.opaque}
        case Pong():
            return {"type": "pong", "opaque": frame.opaque}
        case GoAway():
            return {"type": "goaway", "code": frame.code, "message": frame.message}


def header_bytes(frame: Frame) -> bytes:
    """The JSON header of `frame` as sent (to check it against `MAX_HEADER` before sending)."""
    if type(frame) is Data and not (frame.text or frame.more):
        # The hot path: one per 16 KiB of body; skip the generic dict + json machinery.
        return b'{"type":"data","id":%d}' % frame.stream_id
    if type(frame) is End and frame.code is None and not frame.reason:  # one per message
        return b'{"type":"end","id":%d}' % frame.stream_id
    if type(frame) is Window:  # one per request (its extra credit), more on long bodies
        return b'{"type":"window","id":%d,"inc":%d}' % (frame.stream_id, frame.increment)
    return _ENCODE(_header_of(frame)).encode()


def encode(frame: Frame) -> bytes:
    """One tunnel message carrying `frame`."""
    header = header_bytes(frame)
    payload = frame.payload if type(frame) is Data else b""
    return b"".join((len(header).to_bytes(_LEN, "big"), header, payload))


# ---------------------------------------------------------------- decoding


# Each field rule twice: on a header's key (`_int`, decoding), and on a value itself
# (`_checked_int`, `check_head` on a head we send).


def _int(header: dict[str, Any], key: str, low: int, high: int) -> int:
    return _checked_int(header.get(key), key, low, high)


def _checked_int(value: Any, key: str, low: int, high: int) -> int:
    # bool is an int subclass in Python; JSON true must not pass as 1.
    if type(value) is not int or not low <= value <= high:
        raise ProtocolError(f"field {key!r} must be an integer in [{low}, {high}]")
    return value


def _bool(header: dict[str, Any], key: str, default: bool) -> bool:
    value = header.get(key, default)
    if type(value) is not bool:
        raise ProtocolError(f"field {key!r} must be a boolean")
    return value


def _str(header: dict[str, Any], key: str, default: str | None = None) -> str:
    value = header.get(key, default)
    if type(value) is not str:
        raise ProtocolError(f"field {key!r} must be a string")
    return value


def _token(header: dict[str, Any], key: str) -> str:
    return _checked_token(_str(header, key), key)


def _checked_token(value: str, key: str) -> str:
    if type(value) is not str or not _TOKEN.fullmatch(value):
        raise ProtocolError(f"field {key!r} must be an HTTP token")
    return value


def _headers(header: dict[str, Any]) -> Headers:
    value = header.get("headers", [])
    if type(value) is not list:
        raise ProtocolError("field 'headers' must be a list of [name, value] pairs")
    if not value:
        return ()
    # Looked at by C loops (map, zip), not a Python one per header: a request has dozens.
    if {*map(type, value)} != {list} or {*map(len, value)} != {2}:
        raise ProtocolError("field 'headers' must be a list of [name, value] pairs")
    names, texts = zip(*value, strict=True)
    _check_fields(names, texts)
    return tuple(zip(names, texts, strict=True))


def _check_fields(names: Sequence[str], texts: Sequence[str]) -> tuple[str, str]:
    """Every name a token, no value with CR, LF or NUL; returns all names and all values joined.

    All names and all values at once (a head has dozens); the slow path below only names the
    culprit."""
    try:
        every_name, every_text = "".join(names), "".join(texts)
    except TypeError:
        raise ProtocolError("field 'headers' must be a list of [name, value] pairs") from None
    if (
        not all(names)
        or not _TOKEN_CHARS.fullmatch(every_name)
        or _BAD_VALUE_CHARS.search(every_text)
    ):
        for name, text in zip(names, texts, strict=True):
            if not _TOKEN.fullmatch(name) or _BAD_VALUE_CHARS.search(text):
                raise ProtocolError(f"invalid header {name!r}")
    return every_name, every_text


def _protocols(header: dict[str, Any]) -> tuple[str, ...]:
    value = header.get("protocols", [])
    if type(value) is not list:
        raise ProtocolError("field 'protocols' must be a list of tokens")
    return _checked_protocols(value)


def _checked_protocols(value: Sequence[str]) -> tuple[str, ...]:
    if not all(type(p) is str and _TOKEN.fullmatch(p) for p in value):
        raise ProtocolError("field 'protocols' must be a list of tokens")
    return tuple(value)


def _target(header: dict[str, Any]) -> str:
    return _checked_target(_str(header, "target"))


def _checked_target(value: str) -> str:
    # Origin-form only: the agent appends it to its local base URL, so no scheme, no authority.
    if type(value) is not str:
        raise ProtocolError("field 'target' must be a string")
    if not value.startswith("/") or value.startswith("//") or _BAD_VALUE_CHARS.search(value):
        raise ProtocolError("field 'target' must be a path starting with a single '/'")
    if _SPACE.search(value):  # what str.isspace() says is whitespace (the same C test)
        raise ProtocolError("field 'target' must not contain whitespace")
    return value


def _decode_hello(h: dict[str, Any]) -> Hello:
    ping: Any = h.get("ping")
    # The chained comparison also rejects NaN; the bound keeps float() from overflowing.
    if type(ping) not in (int, float) or not 0 < ping <= MAX_PING_INTERVAL:
        raise ProtocolError("field 'ping' must be a positive number of seconds")
    return Hello(
        version=_int(h, "version", 1, 2**31 - 1),
        max_frame_payload=_int(h, "max_payload", MIN_MAX_PAYLOAD, MAX_MAX_PAYLOAD),
        initial_window=_int(h, "window", 1, MAX_WINDOW),
        ping_interval=float(ping),
        max_streams=None if h.get("streams") is None else _int(h, "streams", 1, MAX_STREAM_ID),
        batch=_bool(h, "batch", False),
    )


def _decode_request(h: dict[str, Any]) -> RequestOpen:
    return RequestOpen(
        stream_id=_int(h, "id", 1, MAX_STREAM_ID),
        method=_token(h, "method"),
        target=_target(h),
        headers=_headers(h),
        body=_bool(h, "body", True),
        websocket=_bool(h, "ws", False),
        subprotocols=_protocols(h),
        port=None if h.get("port") is None else _int(h, "port", 1, 65535),
    )


def _decode_response(h: dict[str, Any]) -> ResponseHead:
    return ResponseHead(_int(h, "id", 1, MAX_STREAM_ID), _int(h, "status", 100, 599), _headers(h))


def _decode_end(h: dict[str, Any]) -> End:
    code = None if h.get("code") is None else _int(h, "code", 1000, 4999)
    return End(_int(h, "id", 1, MAX_STREAM_ID), code, _str(h, "reason", ""))


def _decode_reset(h: dict[str, Any]) -> Reset:
    code = _str(h, "code")
    if not code:
        raise ProtocolError("field 'code' must not be empty")
    return Reset(_int(h, "id", 1, MAX_STREAM_ID), code, _str(h, "message", ""))


def _decode_goaway(h: dict[str, Any]) -> GoAway:
    code = _str(h, "code")
    if not code:
        raise ProtocolError("field 'code' must not be empty")
    return GoAway(code, _str(h, "message", ""))


def check_head(frame: RequestOpen | ResponseHead, *, max_header: int = MAX_HEADER) -> None:
    """Raise the `ProtocolError` that `decode(encode(frame))` would: the very same field rules,
    applied to the values themselves, so a head we send costs no JSON round trip to check."""
    headers = frame.headers
    names, texts = zip(*headers, strict=True) if headers else ((), ())
    every_name, every_text = _check_fields(names, texts)
    _checked_int(frame.stream_id, "id", 1, MAX_STREAM_ID)
    if isinstance(frame, RequestOpen):
        protocols = _checked_protocols(frame.subprotocols)
        target = _checked_target(frame.target)
        _checked_token(frame.method, "method")
        if frame.port is not None:
            _checked_int(frame.port, "port", 1, 65535)
        if type(frame.body) is not bool or type(frame.websocket) is not bool:
            raise ProtocolError("fields 'body' and 'ws' must be booleans")
    else:
        protocols, target = (), ""
        _checked_int(frame.status, "status", 100, 599)
    # JSON spends at most 6 bytes on a character (a \uXXXX escape) and a few on punctuation:
    # only a head that might be too long is encoded to measure it.
    chars = len(every_name) + len(every_text) + len(target) + sum(map(len, protocols))
    bound = 256 + 6 * chars + 16 * len(headers) + 8 * len(protocols)
    if bound > max_header and (size := len(header_bytes(frame))) > max_header:
        raise ProtocolError(f"header of {size} bytes exceeds the limit of {max_header}")


_DECODERS: Final[dict[str, Callable[[dict[str, Any]], Frame]]] = {
    "hello": _decode_hello,
    "request": _decode_request,
    "response": _decode_response,
    "end": _decode_end,
    "window": lambda h: Window(_int(h, "id", 1, MAX_STREAM_ID), _int(h, "inc", 1, MAX_WINDOW)),
    "reset": _decode_reset,
    "ping": lambda h: Ping(_int(h, "opaque", 0, MAX_OPAQUE)),
    "pong": lambda h: Pong(_int(h, "opaque", 0, MAX_OPAQUE)),
    "goaway": _decode_goaway,
}


def decode(
    message: bytes | bytearray | memoryview,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    max_header: int = MAX_HEADER,
) -> Frame:
    """The frame in one tunnel message; `ProtocolError` if it is malformed or beyond the limits."""
    view = memoryview(message)
    if len(view) < _LEN:
        raise ProtocolError(f"message of {len(view)} bytes is shorter than the length prefix")
    header_len = int.from_bytes(view[:_LEN], "big")
    if header_len > max_header:
        raise ProtocolError(f"header of {header_len} bytes exceeds the limit of {max_header}")
    end = _LEN + header_len
    if len(view) < end:
        raise ProtocolError("header length runs beyond the end of the message")
    raw = bytes(view[_LEN:end])
    if raw[-1:] == b"}" and ((data := raw.startswith(_PLAIN_DATA)) or raw.startswith(_PLAIN_END)):
        # The hot path, a body piece or a plain end: what `header_bytes` writes for them.
        digits = raw[len(_PLAIN_DATA if data else _PLAIN_END) : -1]
        if digits.isdigit() and digits[:1] != b"0" and len(digits) <= 10:
            if (stream_id := int(digits)) > MAX_STREAM_ID:
                raise ProtocolError(f"field 'id' must be an integer in [1, {MAX_STREAM_ID}]")
            if not data:
                if len(view) == end:  # (a payload: refused below, as for any other frame)
                    return End(stream_id)
            elif len(view) - end > max_payload:
                raise ProtocolError(f"payload of {len(view) - end} bytes exceeds {max_payload}")
            else:
                return Data(stream_id, bytes(view[end:]))
    elif len(view) == end and (window := _PLAIN_WINDOW.fullmatch(raw)) is not None:
        stream_id, increment = int(window[1]), int(window[2])
        if stream_id <= MAX_STREAM_ID and increment <= MAX_WINDOW:
            return Window(stream_id, increment)
    try:
        header = _loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting/ints
        raise ProtocolError(f"header is not UTF-8 JSON: {exc}") from None
    if type(header) is not dict:
        raise ProtocolError("header must be a JSON object")
    kind = header.get("type")
    payload = view[end:]
    if kind == "data":
        if len(payload) > max_payload:
            raise ProtocolError(f"payload of {len(payload)} bytes exceeds {max_payload}")
        return Data(
            _int(header, "id", 1, MAX_STREAM_ID),
            bytes(payload),
            _bool(header, "text", False),
            _bool(header, "more", False),
        )
    decoder = _DECODERS.get(kind) if type(kind) is str else None
    if decoder is None:
        raise ProtocolError(f"unknown frame type {kind!r}")
    if payload:
        raise ProtocolError(f"a {kind} frame carries no payload")
    return decoder(header)


def max_message_size(max_payload: int) -> int:
    """The longest message a side that announced `max_payload` can receive (a Data frame)."""
    return _LEN + MAX_HEADER + max_payload
