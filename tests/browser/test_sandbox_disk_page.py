"""The sandbox detail page says where the workspace's shared disk is, and what it is for."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveServer, Tour
from tests.browser.test_first_hour import DESKTOP, insert_sandbox
from tests.browser.test_web_ui import api_workspace, sign_in


@pytest.mark.browser
def test_the_detail_page_shows_the_shared_disk(
    live_server: LiveServer, tour_factory: Callable[..., Tour], db_url: str
) -> None:
    """The detail names the disk's path (the API's diskPath) and says it is shared by the
    workspace's sandboxes and outlives them."""
    with closing(live_server.register("dora")) as owner:
        wid = api_workspace(owner, "Disks")
        sandbox_id = insert_sandbox(db_url, wid, "disk-box", "paused")
        disk = owner.get(f"/api/sandboxes/{sandbox_id}").json()["diskPath"]
    assert disk
    tour = tour_factory(live_server.url, viewport=DESKTOP)
    sign_in(tour, "dora")
    page = tour.page
    page.goto(f"{live_server.url}/w/{wid}/sandboxes/{sandbox_id}")
    facts = page.locator("dl.facts")
    expect(facts.locator("dt", has_text="Shared workspace disk")).to_be_visible()
    shown = facts.locator("dd.disk-path")
    expect(shown.locator("code")).to_have_text(disk)
    expect(shown).to_contain_text("shared by every sandbox in this workspace")
    expect(shown).to_contain_text("kept when sandboxes are deleted")
    tour.shot("detail-disk")
