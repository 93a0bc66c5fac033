"""The Audit pages: owners and maintainers read their workspace's log with filters and paging,
admins the whole server's; members below maintainer get no Audit tab; a phone fits it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveServer, Tour
from tests.browser.test_web_ui import api_workspace, sign_in

VIEWPORT = {"width": 1280, "height": 800}
PHONE = {"viewport": {"width": 390, "height": 800}, "is_mobile": True, "has_touch": True}


@pytest.mark.browser
def test_owner_reads_and_filters_the_workspace_log(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """The Audit tab lists who did what, newest first; the action filter narrows it; with more
    entries than a page, "Show more" brings the rest."""
    owner = live_server.register("olga")
    wid = api_workspace(owner, "Audited")
    for n in range(55):  # more than one page (50)
        assert owner.patch(f"/api/workspaces/{wid}", json={"name": f"Audited {n}"}).is_success
    tour = tour_factory(live_server.url, label="audit", viewport=VIEWPORT)
    sign_in(tour, "olga")
    page = tour.page
    page.goto(f"{live_server.url}/w/{wid}")
    page.get_by_role("link", name="Audit", exact=True).click()
    expect(page.get_by_role("heading", name="Audit log of Audited 54")).to_be_visible()
    entries = page.get_by_test_id("audit-entry")
    expect(entries).to_have_count(50)
    expect(entries.first).to_contain_text("workspace.renamed")
    expect(entries.first).to_contain_text("olga")
    page.get_by_role("button", name="Show more").click()
    expect(entries).to_have_count(56)  # 55 renames and the creation
    expect(page.get_by_role("button", name="Show more")).to_have_count(0)
    page.get_by_label("Action").select_option("workspace.")
    page.get_by_label("Who (name or id)").fill("olga")
    page.get_by_role("button", name="Apply").click()
    expect(entries.last).to_contain_text("workspace.created")
    page.get_by_label("Action").select_option("sandbox.")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_text("Nothing recorded that matches.")).to_be_visible()
    tour.shot("audit")


@pytest.mark.browser
def test_no_audit_tab_below_maintainer_and_the_admin_log_fits_a_phone(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """A developer sees no Audit tab; the admin's server-wide log fits a 390-px phone."""
    admin = live_server.register("ada")
    wid = api_workspace(admin, "Team")
    live_server.register("dev")
    added = admin.post(
        f"/api/workspaces/{wid}/members", json={"username": "dev", "role": "developer"}
    )
    assert added.status_code == 201
    dev = tour_factory(live_server.url, label="audit-dev", viewport=VIEWPORT)
    sign_in(dev, "dev")
    dev.page.goto(f"{live_server.url}/w/{wid}")
    expect(dev.page.get_by_role("link", name="Members")).to_be_visible()
    expect(dev.page.get_by_role("link", name="Audit", exact=True)).to_have_count(0)

    phone = tour_factory(live_server.url, label="audit-phone", **PHONE)
    sign_in(phone, "ada")
    page = phone.page
    page.goto(f"{live_server.url}/admin")
    page.get_by_role("link", name="Audit log of the whole server").click()
    expect(page.get_by_role("heading", name="Audit log", exact=True)).to_be_visible()
    expect(page.get_by_test_id("audit-entry").first).to_be_visible()
    expect(page.get_by_role("link", name="Export (JSON lines)")).to_be_visible()
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, f"the audit page scrolls sideways ({width} px)"
    phone.shot("audit-phone")
