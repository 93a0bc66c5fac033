"""How the text of one setting becomes its value; a bad text raises ValueError saying why (pure)."""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

BACKENDS = ("process", "docker", "kubernetes")
_BACKEND_ALIASES = {"k8s": "kubernetes", "kube": "kubernetes"}
_SCHEMES = ("http", "https")
LOG_FORMATS = ("text", "json")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"^(\d+)\s*(b|kib|mib|gib|kb|mb|gb|k|m|g)?$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 1000**2,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 1000**3,
}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# POSIX-portable user names (what useradd accepts by default), at most 32 characters.
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}\$?")
_DOMAIN = re.compile(r"[a-z0-9.-]+(:\d+)?")
_HTTP_URL = re.compile(r"^https?://[^/\s]+")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as `90s`, `30m`, `1h30m` or a bare number of seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 30m, 1h30m, 0)")
    return total


def parse_size(text: str) -> int:
    """Bytes in a size such as `32MiB`, `1048576` or `10k`."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 1048576, 512KiB, 32MiB)")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not true or false")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (example: 127.0.0.1:8080)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def parse_list(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def parse_networks(text: str | None) -> tuple[IPNetwork, ...]:
    """Addresses or CIDRs (`10.0.0.0/8, 192.168.1.7, ::1`) as networks."""
    networks = []
    for item in parse_list(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"{item!r} is not an IP address or CIDR (example: 10.0.0.0/8)"
            ) from None
    return tuple(networks)


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """The user data directory; as root a system folder (embedded PostgreSQL opens its parents)."""
    if os.name == "posix" and os.geteuid() == 0:
        return Path("/var/lib/agentserver")
    xdg = environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path(environ.get("HOME", "~")).expanduser() / ".local" / "share"
    return base / "agentserver"


# Converters: what a setting's (possibly unset) text means. Each takes the text after flag,
# environment and default were consulted (None when none of them gave one).


def listen_address(text: str | None) -> tuple[str, int]:
    return parse_listen(text or "")


def duration(text: str | None) -> float:
    return parse_duration(text or "")


def positive_duration(text: str | None) -> float:
    seconds = parse_duration(text or "")
    if seconds <= 0:
        raise ValueError("must be longer than 0 (examples: 30s, 2m)")
    return seconds


def size(text: str | None) -> int:
    return parse_size(text or "")


def boolean(text: str | None) -> bool:
    return parse_bool(text or "")


def whole(text: str | None) -> int:
    if text is None or not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a whole number ≥ 0")
    return int(text)


def whole_or_zero(text: str | None) -> int:
    """A whole number, 0 when unset (the caller then works one out)."""
    return whole(text or "0")


def at_least_one(text: str | None) -> int:
    if whole(text) < 1:
        raise ValueError("must be at least 1")
    return int(text or "")


def text(value: str | None) -> str:
    return value or ""


def optional_text(value: str | None) -> str | None:
    return value or None


def no_trailing_slash(value: str | None) -> str:
    return (value or "").rstrip("/")


def _check_http_url(value: str | None) -> None:
    if value and not _HTTP_URL.match(value):
        raise ValueError(f"{value!r} is not an http(s) URL")


def http_url(value: str | None) -> str:
    """An http(s) URL without its trailing slash."""
    _check_http_url(value)
    return no_trailing_slash(value)


def optional_http_url(value: str | None) -> str | None:
    """An http(s) URL as given, or None."""
    _check_http_url(value)
    return value or None


def optional_base_url(value: str | None) -> str | None:
    """An http(s) URL without its trailing slash, or None."""
    _check_http_url(value)
    return no_trailing_slash(value) or None


def names(value: str | None) -> tuple[str, ...]:
    return parse_list(value)


def lowercase_names(value: str | None) -> tuple[str, ...]:
    return tuple(name.lower() for name in parse_list(value))


def email_domains(value: str | None) -> tuple[str, ...]:
    return tuple(d.lower().lstrip("@") for d in parse_list(value))


def domain(value: str | None) -> str | None:
    """A domain (with an optional port), lowercased, without its final dot; None when blank."""
    if value is None:
        return None
    name = value.strip().strip(".").lower() or None
    if name and not _DOMAIN.fullmatch(name):
        raise ValueError(f"{name!r} is not a domain")
    return name


def url_scheme(value: str | None) -> str:
    scheme = (value or "").lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"{scheme!r} must be {' or '.join(_SCHEMES)}")
    return scheme


def optional_fernet_key(value: str | None) -> str | None:
    """A Fernet key: 32 bytes in URL-safe base64 (44 characters), or None."""
    if not value:
        return None
    key = value.strip()
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 32 or len(key) != 44:
        raise ValueError(
            "must be 32 bytes in URL-safe base64 (44 characters), e.g. from `python3 -c 'import"
            " base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'`"
        )
    return key


def log_format(value: str | None) -> str:
    kind = (value or "").lower()
    if kind not in LOG_FORMATS:
        raise ValueError(f"{kind!r} must be {' or '.join(LOG_FORMATS)}")
    return kind


def backend(value: str | None) -> str:
    name = (value or "").lower()
    name = _BACKEND_ALIASES.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"{name!r} must be one of {', '.join(BACKENDS)}")
    return name


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_LABEL_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_LABEL = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}=({_LABEL_NAME})?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def quantity(value: str | None) -> str:
    """A Kubernetes resource quantity (e.g. 5Gi, 500m, 2)."""
    text = (value or "").strip()
    if not _QUANTITY.fullmatch(text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 5Gi, 500m, 2)")
    return text


def optional_quantity(value: str | None) -> str | None:
    return quantity(value) if value and value.strip() else None


def labels(value: str | None) -> tuple[tuple[str, str], ...]:
    """Comma-separated Kubernetes labels, KEY=VALUE each (at least one)."""
    pairs = []
    for item in parse_list(value):
        if not _LABEL.fullmatch(item):
            raise ValueError(f"{item!r} is not a Kubernetes label KEY=VALUE")
        key, _, val = item.partition("=")
        pairs.append((key, val))
    if not pairs:
        raise ValueError("give at least one label KEY=VALUE")
    return tuple(pairs)


def optional_dns_label(value: str | None) -> str | None:
    """A Kubernetes name (a DNS-1123 label: a namespace, a storage class); None when blank."""
    text = (value or "").strip()
    if not text:
        return None
    if not _DNS_LABEL.fullmatch(text):
        raise ValueError(f"{text!r} is not a DNS-1123 label (lowercase letters, digits and -)")
    return text


def user_name(value: str | None) -> str:
    name = (value or "").strip()
    if not _USER_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a user name"
            " (lowercase letters, digits, _ and -, starting with a letter or _)"
        )
    return name


def directory(value: str | None) -> Path:
    return Path(value or "").expanduser().resolve()


def data_directory(environ: Mapping[str, str]) -> Path:
    """Where data lives when no directory is given: see default_data_dir."""
    return default_data_dir(environ).resolve()


def sandbox_subnet(value: str | None) -> ipaddress.IPv4Network:
    """An IPv4 network with room for at least one /30 (a process sandbox's own addresses)."""
    try:
        network = ipaddress.IPv4Network((value or "").strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 network (example: 10.250.0.0/16)") from None
    if network.prefixlen > 30:
        raise ValueError(f"{value!r} is too small: each sandbox takes a /30")
    return network
