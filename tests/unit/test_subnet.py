"""Process sandboxes' addresses: a /30 each, claimed by a link name (sandboxes/subnet.py)."""

from __future__ import annotations

import ipaddress
from itertools import islice

import pytest

from agentserver.sandboxes.netns import nameservers
from agentserver.sandboxes.subnet import (
    Slot,
    free_slots,
    namespace_name,
    sandbox_of_namespace,
    slot_count,
    slot_of_link,
)
from agentserver.settings.values import sandbox_subnet

NET = ipaddress.IPv4Network("10.250.0.0/16")


def test_a_slot_is_a_30_with_the_host_first_and_the_sandbox_second() -> None:
    """Slot n holds addresses 4n..4n+3 of the subnet: host end .1, sandbox .2, link `as<n>`."""
    slot = Slot(NET, 65)
    assert str(slot.subnet) == "10.250.1.4/30"
    assert (slot.host_address, slot.sandbox_address) == ("10.250.1.5", "10.250.1.6")
    assert slot.link == "as65"
    assert len(Slot(NET, slot_count(NET) - 1).link) <= 15


def test_free_slots_skip_those_whose_link_exists() -> None:
    """Links of other sandboxes (any server's) take their slots; other interfaces do not."""
    links = ["lo", "eth0", "as0", "as2", "as-x", "as02", "asdf", "br-1"]
    assert [s.index for s in islice(free_slots(NET, links), 3)] == [1, 3, 4]


def test_slots_stay_inside_the_subnet() -> None:
    """A small subnet has as many slots as /30s; a link beyond them claims nothing."""
    small = ipaddress.IPv4Network("10.250.7.0/29")
    assert slot_count(small) == 2
    assert [s.index for s in free_slots(small, ["as1"])] == [0]
    assert slot_of_link(small, "as2") is None
    assert list(free_slots(small, ["as0", "as1"])) == []


def test_namespace_names_carry_the_sandbox_id() -> None:
    """Leftovers are found by sandbox id; other namespaces are not ours."""
    assert sandbox_of_namespace(namespace_name("abc123")) == "abc123"
    assert sandbox_of_namespace("docker-1") is None


def test_the_subnet_setting_wants_room_for_one_sandbox() -> None:
    """--sandbox-subnet takes an IPv4 network of at least a /30."""
    assert sandbox_subnet("10.250.0.0/16") == NET
    for bad in ("10.250.0.0/31", "fd00::/64", "nope"):
        with pytest.raises(ValueError):
            sandbox_subnet(bad)


def test_nameservers_leave_out_loopback_ones() -> None:
    """A sandbox can reach the host's DNS servers, but not one on the host's loopback."""
    text = "# x\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\nsearch a\n"
    assert nameservers(text) == ["10.255.255.53"]
