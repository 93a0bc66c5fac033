"""The host's side of process sandboxes' networks: namespaces, veth pairs and one nftables table.

Each sandbox gets a network namespace `as-<id>` with its own loopback and one end of a veth
pair (`eth0`, the second address of its /30, subnet.py); the host keeps the other end (`as<n>`,
the first address). The server reaches the agent and previews at the sandbox's address; the
sandbox reaches only its LLM relay on the host's end (llm_relay.py): the table `ip agentserver`
drops everything else a sandbox sends to the host (the server's listener, the embedded
database, sshd, other sandboxes' host ends), and IPv6 is off on the host's ends. When the host
forwards IPv4, sandboxes get outbound access through masquerade, except to private, loopback,
link-local and shared ranges (other sandboxes, Docker networks, the LAN); the host's own DNS
servers stay reachable on port 53. The table is shared by every server on the host and never
removed; it matches interfaces by name, so it does not depend on anyone's subnet.

Inside the namespace, connections to the sandbox's address are passed to its loopback (a table
of its own and `route_localnet`): a dev server that listens on localhost only, as most do by
default, is a preview too. Only the host can connect there.

Blocking calls (they run `ip` and `nft`): run them in a thread.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shutil
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from agentserver.errors import BackendError
from agentserver.sandboxes.subnet import (
    INSIDE_LINK,
    LINK_PREFIX,
    Slot,
    free_slots,
    namespace_name,
    sandbox_of_namespace,
)

NETNS_DIR = Path("/run/netns")
LOCK_FILE = Path("/run/agentserver-netns.lock")  # one table per host: made under this lock
TABLE = "agentserver"
RELAYS = "relays"  # (host end, its address, relay port): what each sandbox may connect to
DNS = "dns"  # the host's name servers, reachable from sandboxes on port 53
BLOCKED = (
    "0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12,"
    " 192.168.0.0/16, 224.0.0.0/3"
)
RUN_TIMEOUT = 20.0
# A namespace of ours with no process in it for this long is an orphan (its server was killed
# and its data directory is gone): a live one holds its agent from a moment after it is made.
ORPHAN_AGE = 300.0
_NAMESERVER = re.compile(r"^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$", re.MULTILINE)


def _table(nameservers: list[str]) -> str:
    wild = f'"{LINK_PREFIX}*"'
    dns = f"elements = {{ {', '.join(nameservers)} }}" if nameservers else ""
    return f"""
table ip {TABLE} {{
    set {RELAYS} {{ type ifname . ipv4_addr . inet_service; }}
    set {DNS} {{ type ipv4_addr; {dns} }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname {wild} ct state established,related accept
        iifname . ip daddr . tcp dport @{RELAYS} accept
        iifname {wild} drop
    }}
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname {wild} ip daddr @{DNS} meta l4proto {{ tcp, udp }} th dport 53 accept
        iifname {wild} ip daddr {{ {BLOCKED} }} drop
        oifname {wild} ct state established,related accept
        oifname {wild} drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat + 10; policy accept;
        iifname {wild} oifname != {wild} masquerade
    }}
}}
"""


_INSIDE_TABLE = f"""
table ip sandbox {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{INSIDE_LINK}" meta l4proto tcp dnat to 127.0.0.1
    }}
}}
"""
_INSIDE_SETUP = f"echo 1 > /proc/sys/net/ipv4/conf/{INSIDE_LINK}/route_localnet && exec nft -f -"


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"{argv[0]} failed: {exc}") from exc


def _check(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        raise BackendError(f"cannot {what}: {done.stderr.strip() or done.returncode}")


@dataclass(frozen=True, slots=True)
class Plumbing:
    """What makes sandbox namespaces on this host: `ip`, `nft`, the subnet, and whether the host
    forwards (then sandboxes get outbound access)."""

    ip: str
    nft: str
    network: ipaddress.IPv4Network
    egress: bool

    def create(self, sandbox_id: str) -> Slot:
        """The sandbox's namespace with its veth pair, addresses and routes (a leftover of an
        earlier start is removed first); its slot."""
        self.remove(sandbox_id)
        name = namespace_name(sandbox_id)
        _check(_run([self.ip, "netns", "add", name]), f"create network namespace {name}")
        try:
            slot = self._claim(name)
            self._address(name, slot)
        except BaseException:
            self.remove(sandbox_id)
            raise
        return slot

    def _claim(self, name: str) -> Slot:
        """Create the veth pair on the first free slot (another server may take one between
        the listing and the creation: then the next)."""
        links = os.listdir("/sys/class/net")
        for slot in free_slots(self.network, links):
            pair = ["type", "veth", "peer", "name", INSIDE_LINK, "netns", name]
            done = _run([self.ip, "link", "add", slot.link, *pair])
            if done.returncode == 0:
                return slot
            if "exists" not in done.stderr:
                _check(done, f"create the veth pair of {name}")
        raise BackendError(f"no free /30 left in --sandbox-subnet {self.network}")

    def _address(self, name: str, slot: Slot) -> None:
        # No IPv6 on the host's end: a link-local address there would reach the host's
        # services listening on [::] past the IPv4 table.
        Path(f"/proc/sys/net/ipv6/conf/{slot.link}/disable_ipv6").write_text("1")
        host = f"addr add {slot.host_address}/30 dev {slot.link}\nlink set {slot.link} up\n"
        _check(_run([self.ip, "-batch", "-"], host), f"address the host's end of {name}")
        inside = (
            f"link set lo up\naddr add {slot.sandbox_address}/30 dev {INSIDE_LINK}\n"
            f"link set {INSIDE_LINK} up\n"
        )
        if self.egress:
            inside += f"route add default via {slot.host_address}\n"
        _check(_run([self.ip, "-n", name, "-batch", "-"], inside), f"address {name}")
        to_loopback = [self.ip, "netns", "exec", name, "sh", "-c", _INSIDE_SETUP]
        _check(_run(to_loopback, _INSIDE_TABLE), f"pass {name}'s connections to its loopback")

    def remove(self, sandbox_id: str) -> None:
        """Delete the sandbox's namespace (its veth pair goes with it); none is fine."""
        name = namespace_name(sandbox_id)
        if (NETNS_DIR / name).exists():
            # The pair first: a namespace still held by a survivor would keep it.
            with suppress(BackendError):
                _run([self.ip, "-n", name, "link", "del", INSIDE_LINK])
            _check(_run([self.ip, "netns", "del", name]), f"remove network namespace {name}")

    def allow_relay(self, slot: Slot, port: int, *, allowed: bool) -> None:
        """Let the sandbox connect to its LLM relay (or take that back)."""
        verb = "add" if allowed else "delete"
        element = f"{{ {slot.link} . {slot.host_address} . {port} }}"
        done = _run([self.nft, verb, "element", "ip", TABLE, RELAYS, element])
        if allowed:
            _check(done, "let the sandbox reach its LLM relay")

    def sweep(self, sandbox_ids: list[str], orphan_age: float = ORPHAN_AGE) -> list[str]:
        """Remove the namespaces left by an earlier run for these sandboxes, and orphans: any
        server's with no process in it for `orphan_age` seconds (a running sandbox's always
        holds its agent); the ids removed."""
        ours = set(sandbox_ids)
        found = [i for i in map(sandbox_of_namespace, _namespaces()) if i is not None]
        gone = [i for i in found if i in ours or self._orphan(i, orphan_age)]
        for sandbox_id in gone:
            self.remove(sandbox_id)
        return gone

    def _orphan(self, sandbox_id: str, age: float) -> bool:
        name = namespace_name(sandbox_id)
        try:
            made = (NETNS_DIR / name).stat().st_mtime
        except OSError:
            return False
        if time.time() - made < age:
            return False
        pids = _run([self.ip, "netns", "pids", name])
        return pids.returncode == 0 and not pids.stdout.strip()


def _namespaces() -> list[str]:
    return sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []


def nameservers(resolv_conf: str) -> list[str]:
    """The IPv4 name servers of a resolv.conf text, loopback ones left out (a sandbox cannot
    reach the host's loopback)."""
    found = _NAMESERVER.findall(resolv_conf)
    return [a for a in found if not ipaddress.IPv4Address(a).is_loopback]


def _ensure_table(nft: str) -> None:
    """The shared table, made once per host (under a lock: servers start concurrently)."""
    with LOCK_FILE.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _run([nft, "list", "table", "ip", TABLE]).returncode == 0:
            return
        try:
            servers = nameservers(Path("/etc/resolv.conf").read_text())
        except OSError:
            servers = []
        _check(_run([nft, "-f", "-"], _table(servers)), "create the nftables table for sandboxes")


def probe(network: ipaddress.IPv4Network) -> Plumbing | str:
    """The plumbing when this host can make sandbox namespaces (root, `ip`, `nft`, a namespace
    made and removed as a trial); otherwise why not."""
    if os.geteuid() != 0:
        return "the server does not run as root"
    ip, nft = shutil.which("ip"), shutil.which("nft")
    if ip is None or nft is None:
        return "`ip` (iproute2) and `nft` (nftables) are needed"
    try:
        forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        forwarding = False
    plumbing = Plumbing(ip, nft, network, egress=forwarding)
    trial = f"probe{os.getpid()}"
    try:
        _ensure_table(nft)
        _check(_run([ip, "netns", "add", namespace_name(trial)]), "create a network namespace")
        plumbing.remove(trial)
    except (BackendError, OSError) as exc:
        return str(exc)
    return plumbing
