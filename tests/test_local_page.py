"""`fixbot local --demo` in a real browser: Debian's chromium driven through Playwright.

The test starts the real command, opens the page and does what a newcomer would: types
`/fix`, watches the status tick, opens the thread, tries Approve as someone who may not,
asks for a change in the thread, approves as the approver, reads the pull request's diff
and opens App Home. Screenshots of the thread and of App Home land in the test's tmp
directory; with FIXBOT_DOCS_SCREENSHOTS=1 they also replace docs/local-*.png.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("FIXBOT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STEP_S = 120_000  # ms: one agent step on a loaded machine (bounded polls, not deadlines)
FIX = "/fix a 10% discount takes off far too much repo:demo/shop"

# Every text each message showed, by ts: the page re-renders on each change.
RECORD_TEXTS = """
window.seenTexts = {};
new MutationObserver(() => {
  for (const node of document.querySelectorAll(".message[data-ts]")) {
    const texts = (window.seenTexts[node.dataset.ts] ||= []);
    const text = node.querySelector(".body").innerText;
    if (texts[texts.length - 1] !== text) texts.push(text);
  }
}).observe(document, {childList: true, subtree: true});
"""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no chromium at {CHROMIUM}")


@dataclass
class LocalWorkspace:
    url: str
    process: subprocess.Popen[bytes]
    started: float  # time.monotonic() when the command started
    log: Path


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalWorkspace]:
    """`fixbot local --demo` in `tmp_path`, with no Slack or model settings at all."""
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(tmp_path / "home"),
        "FIXBOT_HTTP_PORT": str(port),
        "FIXBOT_WORKDIR": str(tmp_path / "work"),
        "LOG_FORMAT": "console",
    }
    log = tmp_path / "fixbot-local.log"
    fixbot = Path(sys.executable).parent / "fixbot"
    started = time.monotonic()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(fixbot), "local", "--demo"],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/local/"
    try:
        await _wait_ready(f"http://127.0.0.1:{port}/readyz", process, log)
        yield LocalWorkspace(url, process, started, log)
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 40)
        assert code == 0, log.read_text()
    assert f"Fixbot's local workspace: {url}" in log.read_text()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


async def test_a_demo_task_from_the_browser(
    local: LocalWorkspace, browser: Browser, tmp_path: Path
) -> None:
    page = await browser.new_page(viewport={"width": 1440, "height": 960})
    await page.add_init_script(RECORD_TEXTS)
    await page.goto(local.url)
    await expect(page.locator("#channel-title")).to_have_text("# general")
    await expect(page.locator("#demo-pill")).to_be_visible()

    # Ada types /fix; the task's parent message appears and its thread opens.
    await page.fill("#composer-text", FIX)
    await page.press("#composer-text", "Enter")
    parent = page.locator("#messages .message.from-bot").first
    await expect(parent).to_contain_text("a 10% discount takes off far too much")
    await parent.locator(".replies-link").click()
    thread = page.locator("#thread-messages")

    # The plan arrives with Approve and Reject; the status message changed in place.
    plan = thread.locator(".message", has=page.get_by_role("button", name="Approve"))
    await expect(plan).to_contain_text("Plan v1", timeout=STEP_S)
    first_plan_s = time.monotonic() - local.started
    status = thread.locator(".message.from-bot", has_text="Planning finished")
    await expect(status).to_contain_text("(edited)")
    status_texts = await _texts_seen(page, await status.get_attribute("data-ts"))
    assert len(status_texts) >= 2, status_texts
    await expect(thread.locator(".message.from-bot").first).to_contain_text("demo: scripted model")

    # Cy may not approve: a private refusal, and the plan still waits.
    await page.select_option("#person", "U_CY")
    await plan.get_by_role("button", name="Approve").click()
    refusal = thread.locator(".message.ephemeral")
    await expect(refusal).to_contain_text("approvers")
    await expect(refusal).to_contain_text("Only visible to you")
    await expect(plan.get_by_role("button", name="Approve")).to_be_visible()
    await page.select_option("#person", "U_ADA")
    await expect(thread.locator(".message.ephemeral")).to_have_count(0)

    # Ada asks for a change in the thread: the plan is revised, the old one superseded.
    await page.fill("#reply-text", "Please leave rounding to cents out of this fix.")
    await page.press("#reply-text", "Enter")
    await expect(plan).to_contain_text("Plan v2", timeout=STEP_S)
    await expect(thread).to_contain_text("Superseded by a revised plan")

    # Ben approves; red, then green, then the pull request: a branch with its diff.
    await page.select_option("#person", "U_BEN")
    await plan.get_by_role("button", name="Approve").click()
    done = thread.locator(".message", has_text="Pull request ready")
    await expect(done).to_contain_text("Failing before the fix", timeout=2 * STEP_S)
    await expect(done).to_contain_text("Passing after the fix")
    await page.wait_for_timeout(300)  # let the last render settle for the picture
    await _screenshot(page, tmp_path, "local-thread.png")
    await done.get_by_role("button", name="View the pull request (diff)").click()
    diff = page.locator("#diff-body")
    await expect(diff).to_contain_text("return price - price * percent / 100")
    await expect(diff).to_contain_text("tests/test_discount.py")
    await _screenshot(page, tmp_path, "local-diff.png")
    await page.click("#diff-close")

    # App Home: Ben's dashboard, with the task done.
    await page.click("#home-link")
    home = page.locator("#home-view")
    await expect(home).to_contain_text("a 10% discount takes off far too much")
    await _screenshot(page, tmp_path, "local-home.png")

    print(f"\nfirst plan {first_plan_s:.1f} s after `fixbot local --demo` started")


async def _texts_seen(page: Page, ts: str | None) -> list[str]:
    return list(await page.evaluate("ts => window.seenTexts[ts] || []", ts))


async def _screenshot(page: Page, tmp_path: Path, name: str) -> None:
    await page.screenshot(path=tmp_path / name)
    if os.environ.get("FIXBOT_DOCS_SCREENSHOTS") == "1" and name != "local-diff.png":
        shutil.copyfile(tmp_path / name, ROOT / "docs" / name)


async def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll /readyz (database and local Slack connected), with a generous bound."""
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if process.poll() is not None:
                output = await asyncio.to_thread(log.read_text)
                raise AssertionError(f"fixbot local exited {process.returncode}:\n{output}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    output = await asyncio.to_thread(log.read_text)
    raise AssertionError(f"fixbot local never became ready:\n{output}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
