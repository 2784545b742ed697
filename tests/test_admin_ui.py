"""The Socket.IO Admin UI in Chromium, through NGINX, against three replicas:
it logs in with ADMIN_PASSWORD and lists the sockets of every replica.

The UI is the pinned npm package, served by NGINX from ``web/admin/`` at
``/admin/``; the page is allowed to reach nothing but the cluster (any other
request fails the test), so it works with no internet."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from playwright.async_api import async_playwright, expect
from test_browser import CHROMIUM, CHROMIUM_ARGS, pytestmark  # noqa: F401

PASSWORD = "admin-password-for-tests"
WAIT_MS = 20_000  # an upper bound: a roster comes every 5 s


@pytest.fixture
def watched(cluster_factory):
    return cluster_factory(replicas=3, mode="socketio", env={"ADMIN_PASSWORD": PASSWORD})


async def log_in(page, url: str, password: str) -> None:
    await page.goto(f"{url}/admin/")
    await page.get_by_label("Server URL").fill(url)
    await page.get_by_label("Username").fill("admin")
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Connect").click()


async def test_the_admin_ui_lists_every_replicas_sockets(watched, connect):
    clients = [await connect(r.url, f"user{i}", room="ops")
               for i, r in enumerate(watched.replicas)]
    assert sorted(c.server for c in clients) == ["replica-1", "replica-2", "replica-3"]
    elsewhere: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.on("request", lambda r: urlsplit(r.url).netloc != urlsplit(watched.url).netloc
                    and elsewhere.append(r.url))
            await log_in(page, watched.url, "wrong password")
            await expect(page.get_by_text("authentication failed")).to_be_visible(
                timeout=WAIT_MS)
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Connect").click()
            await expect(page.get_by_label("Password")).to_be_hidden(timeout=WAIT_MS)
            await page.goto(f"{watched.url}/admin/#/servers")
            for replica in ("replica-1", "replica-2", "replica-3"):
                await expect(page.get_by_text(replica).first).to_be_visible(timeout=WAIT_MS)
            await page.goto(f"{watched.url}/admin/#/sockets")
            for client in clients:
                await expect(page.get_by_text(client.welcome["sid"])).to_be_visible(
                    timeout=WAIT_MS)
            # One goes: it leaves the list at the next roster.
            await clients[1].sio.disconnect()
            await expect(page.get_by_text(clients[1].welcome["sid"])).to_be_hidden(
                timeout=WAIT_MS)
            await expect(page.get_by_text(clients[0].welcome["sid"])).to_be_visible()
        finally:
            await browser.close()
    assert not elsewhere, f"the admin UI reached outside the cluster: {elsewhere}"
    await asyncio.sleep(0)
