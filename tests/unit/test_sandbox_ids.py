"""Per-sandbox uids and per-workspace gids: allocation, reading it back, handing a disk over."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from agentserver.sandboxes.ids import ID_BASE, Ids, in_range, share_disk

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand files to other ids")


def test_every_sandbox_and_workspace_gets_its_own_id_in_the_range() -> None:
    """Ids are unique, stable per key, and inside the reserved range."""
    ids = Ids()
    uids = [ids.uid(f"s{n}") for n in range(5)]
    assert len(set(uids)) == 5
    assert all(in_range(u) for u in uids)
    assert ids.uid("s3") == uids[3]
    assert ids.gid("w1") != ids.gid("w2")


def test_a_deleted_sandboxes_id_is_not_handed_out_while_higher_ones_exist() -> None:
    """A new sandbox gets an id above every one in use, not a gap left by a deleted one."""
    ids = Ids(uids={"a": ID_BASE + 1, "c": ID_BASE + 3})
    assert ids.uid("new") == ID_BASE + 4


@needs_root
def test_the_allocation_is_read_back_from_the_owners_of_homes_and_disks(tmp_path: Path) -> None:
    """After a restart, a home's owner is its sandbox's uid and a disk's group its workspace's."""
    home = tmp_path / "sandboxes" / "sbx" / "home"
    disk = tmp_path / "workspaces" / "ws" / "disk"
    foreign = tmp_path / "sandboxes" / "old" / "home"
    for folder in (home, disk, foreign):
        folder.mkdir(parents=True)
    os.chown(home, ID_BASE + 7, ID_BASE + 9)
    os.chown(disk, 0, ID_BASE + 9)
    ids = Ids.scan(tmp_path)
    assert ids.uids == {"sbx": ID_BASE + 7}  # the root-owned home is not in the range
    assert ids.gids == {"ws": ID_BASE + 9}
    assert ids.uid("old") == ID_BASE + 8


@needs_root
def test_sharing_a_disk_hands_its_contents_to_the_group_without_following_links(
    tmp_path: Path,
) -> None:
    """The disk becomes root:gid 2770; files and folders inside get the group with the owner's
    permissions, set-uid bits dropped, and a planted link's target is left alone."""
    disk = tmp_path / "disk"
    (disk / "sub").mkdir(parents=True)
    (disk / "sub" / "file").write_text("x")
    (disk / "sub" / "file").chmod(0o4700)
    outside = tmp_path / "outside"
    outside.write_text("server's")
    outside.chmod(0o600)
    (disk / "link").symlink_to(outside)
    gid = ID_BASE + 5
    share_disk(disk, gid)
    info = disk.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, gid, 0o2770)
    sub = (disk / "sub").stat()
    assert (sub.st_gid, stat.S_IMODE(sub.st_mode) & 0o2070) == (gid, 0o2070)
    file = (disk / "sub" / "file").stat()
    assert (file.st_gid, stat.S_IMODE(file.st_mode)) == (gid, 0o770)
    target = outside.stat()
    assert (target.st_gid, stat.S_IMODE(target.st_mode)) == (0, 0o600)


def test_sandboxes_started_at_once_from_threads_never_share_an_id() -> None:
    """Allocations from several worker threads at once all get distinct uids."""
    ids = Ids()
    keys = [[f"t{t}-s{n}" for n in range(300)] for t in range(8)]
    barrier = threading.Barrier(len(keys))

    def allocate(mine: list[str]) -> None:
        barrier.wait()
        for key in mine:
            ids.uid(key)

    threads = [threading.Thread(target=allocate, args=(mine,)) for mine in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids.uids) == 8 * 300
    assert len(set(ids.uids.values())) == 8 * 300
