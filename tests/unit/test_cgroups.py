"""Where process sandboxes' cgroups go: parsing /proc/self/cgroup and mountinfo, and the v2 path
against a fake cgroupfs tree (this machine has no delegated cgroup v2 controllers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentserver.sandboxes.cgroups import (
    Layout,
    Mount,
    Wanted,
    own_cgroups,
    parse_mountinfo,
    parse_proc_cgroup,
    probe,
)

MiB = 1 << 20

# As on the CI machines: v1 hierarchies per controller, an empty cgroup2 mount beside them.
PROC_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/2d5c
2:cpu,cpuacct:/
0::/
"""
MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /with\\040space rw - cgroup cgroup rw,blkio
"""


def test_proc_cgroup_maps_each_controller_to_its_path() -> None:
    """Each v1 controller of a line (joint ones too) maps to the line's path, v2's to ""."""
    assert parse_proc_cgroup(PROC_CGROUP) == {
        "name=systemd": "/",
        "pids": "/",
        "memory": "/process_api/2d5c",
        "cpu": "/",
        "cpuacct": "/",
        "": "/",
    }


def test_mountinfo_keeps_cgroup_mounts_with_their_controllers() -> None:
    """Only cgroup and cgroup2 mounts are kept, with their super options and unescaped paths."""
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.point for m in mounts] == [
        Path("/sys/fs/cgroup/cpu,cpuacct"),
        Path("/sys/fs/cgroup/memory"),
        Path("/sys/fs/cgroup/pids"),
        Path("/sys/fs/cgroup/systemd"),
        Path("/sys/fs/cgroup/unified"),
        Path("/with space"),
    ]
    assert mounts[0] == Mount("/", mounts[0].point, "cgroup", frozenset({"rw", "cpu", "cpuacct"}))
    assert mounts[4].fstype == "cgroup2"


def test_the_servers_own_cgroups_are_found_per_controller() -> None:
    """The server's own v1 cgroup of each controller is its path under that controller's mount."""
    v1, v2 = own_cgroups(PROC_CGROUP, MOUNTINFO)
    assert v1 == {
        "memory": Path("/sys/fs/cgroup/memory/process_api/2d5c"),
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "pids": Path("/sys/fs/cgroup/pids"),
    }
    assert v2 == Path("/sys/fs/cgroup/unified")


def test_a_mount_of_a_subtree_is_followed_and_one_that_hides_the_path_is_not() -> None:
    """A mount whose root is /docker/x shows /docker/x/a at <point>/a, and not /elsewhere."""
    mountinfo = "35 31 0:32 /docker/x /cg/memory rw - cgroup cgroup rw,memory\n"
    assert own_cgroups("4:memory:/docker/x/a\n", mountinfo)[0] == {"memory": Path("/cg/memory/a")}
    assert own_cgroups("4:memory:/elsewhere\n", mountinfo)[0] == {}


def test_the_limit_files_of_each_version() -> None:
    """Memory, CPU (nano_cpus / 1e9 of a 100 ms period) and pids limits in v1 and v2 files."""
    wanted = Wanted(memory=512 * MiB, nano_cpus=1_500_000_000, pids=64)
    assert wanted.files("memory", 1) == [("memory.limit_in_bytes", str(512 * MiB))]
    assert wanted.files("memory", 2) == [("memory.max", str(512 * MiB))]
    assert wanted.files("cpu", 1) == [
        ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "150000"),
    ]
    assert wanted.files("cpu", 2) == [("cpu.max", "150000 100000")]
    assert wanted.files("pids", 2) == [("pids.max", "64")]


def test_the_description_names_the_limits_and_what_is_missing() -> None:
    """describe() lists the applied limits with the cgroup version, then the missing ones."""
    wanted = Wanted(memory=2 << 30, nano_cpus=2_000_000_000, pids=256)
    parents = {c: (1, Path("/x")) for c in ("memory", "cpu", "pids")}
    assert Layout(wanted, parents, {}).describe() == (
        "memory 2 GiB, 2 CPUs, 256 processes (cgroup v1)"
    )
    partial = Layout(wanted, {"pids": (1, Path("/x"))}, {"memory": "why", "cpu": "why"})
    assert partial.describe() == "256 processes (cgroup v1); no memory, cpu limit (no cgroup)"
    assert Layout(wanted, {}, {"memory": "w"}).describe() == "no memory limit (no cgroup)"


def fake_v2(tmp_path: Path, offers: str) -> tuple[str, str, Path]:
    """A fake cgroup2 tree: the server in /svc, whose cgroup.controllers is `offers`."""
    own = tmp_path / "svc"
    own.mkdir()
    (own / "cgroup.controllers").write_text(offers + "\n")
    (own / "cgroup.subtree_control").write_text("\n")
    mountinfo = f"41 31 0:38 / {tmp_path} rw,relatime - cgroup2 cgroup2 rw\n"
    return "0::/svc\n", mountinfo, own


def test_v2_delegates_each_controller_to_our_folder_and_writes_the_limits(tmp_path: Path) -> None:
    """With cgroup v2 only, the server's cgroup and our folder enable each controller for a
    child, and a sandbox's cgroup gets memory.max, cpu.max and pids.max."""
    proc, mountinfo, own = fake_v2(tmp_path, "cpuset cpu io memory pids")
    wanted = Wanted(memory=256 * MiB, nano_cpus=500_000_000, pids=32)
    layout = probe(wanted, proc, mountinfo)
    assert layout.missing == {}
    assert layout.parents == {c: (2, own / "agentserver") for c in ("memory", "cpu", "pids")}
    assert (own / "cgroup.subtree_control").read_text() == "+pids"  # one write per controller
    assert (own / "agentserver" / "cgroup.subtree_control").read_text() == "+pids"
    assert layout.describe() == "memory 256 MiB, 0.5 CPUs, 32 processes (cgroup v2)"
    cgroup = layout.cgroup("sb-1")
    cgroup.create()
    folder = own / "agentserver" / "sb-1"
    assert (folder / "memory.max").read_text() == str(256 * MiB)
    assert (folder / "cpu.max").read_text() == "50000 100000"
    assert (folder / "pids.max").read_text() == "32"
    assert cgroup.procs == (str(folder / "cgroup.procs"),)  # one folder for all three


def test_v2_without_the_controllers_reports_them_missing(tmp_path: Path) -> None:
    """A cgroup2 tree that does not offer memory/cpu to the server leaves those limits out,
    saying why, and keeps the one it offers."""
    proc, mountinfo, _ = fake_v2(tmp_path, "pids")
    layout = probe(Wanted(memory=MiB, nano_cpus=10**9, pids=8), proc, mountinfo)
    assert set(layout.missing) == {"memory", "cpu"}
    assert "no cgroup hierarchy offers" in layout.missing["memory"]
    assert set(layout.parents) == {"pids"}


def test_an_unusable_folder_reports_the_error(tmp_path: Path) -> None:
    """When our folder cannot be made or written, the limit is missing with the path named."""
    proc, mountinfo, own = fake_v2(tmp_path, "memory")
    (own / "agentserver").symlink_to(tmp_path / "nowhere")  # as root, modes would not stop us
    layout = probe(Wanted(memory=MiB), proc, mountinfo)
    assert set(layout.missing) == {"memory"}
    assert str(own / "agentserver") in layout.missing["memory"]


def test_no_cgroup_mounts_means_every_limit_is_missing() -> None:
    """Without any cgroup mount (mountinfo has none) every wanted limit is reported missing."""
    layout = probe(Wanted(memory=MiB, nano_cpus=10**9, pids=8), PROC_CGROUP, "")
    assert layout.parents == {}
    assert set(layout.missing) == {"memory", "cpu", "pids"}
    assert probe(Wanted(), PROC_CGROUP, "").describe() == (
        "no memory, CPU or process limits (none configured)"
    )


def test_the_sweep_removes_only_empty_cgroups_of_our_sandboxes(tmp_path: Path) -> None:
    """At start, empty cgroups of this server's sandboxes are removed; others stay."""
    parent = tmp_path / "agentserver"
    for name in ("ours", "busy", "someone-elses"):
        (parent / name).mkdir(parents=True)
    (parent / "busy" / "cgroup.procs").write_text("123\n")  # rmdir fails on a populated one
    layout = Layout(Wanted(memory=MiB), {"memory": (1, parent)}, {})
    assert layout.sweep(["ours", "busy", "../x", "missing"]) == [parent / "ours"]
    assert sorted(p.name for p in parent.iterdir()) == ["busy", "someone-elses"]


def test_a_sandbox_id_cannot_name_a_path_outside_our_folder() -> None:
    """A sandbox id with a slash or dots is refused before any path is built from it."""
    layout = Layout(Wanted(memory=MiB), {"memory": (1, Path("/x"))}, {})
    with pytest.raises(ValueError):
        layout.cgroup("../escape")
