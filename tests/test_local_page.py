"""`fixbot local` as a person runs it: the real command, its page, and a browser.

The demo test drives Debian's chromium through Playwright and does what a newcomer would:
types `/fix`, watches the status tick, opens the thread, tries Approve as someone who may
not, asks for a change in the thread, approves as the approver, reads the pull request's
diff and opens App Home. Screenshots of the thread and of App Home land in the test's tmp
directory; with FIXBOT_DOCS_SCREENSHOTS=1 they also replace docs/local-*.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fakes.anthropic import ScriptedModel, structured
from helpers import free_port
from launcher import Launched, launch
from playwright.async_api import Browser, Page, async_playwright, expect
from world import TEST_COMMAND, make_shop_repo, plan_data

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("FIXBOT_CHROMIUM", "/usr/bin/chromium"))
HAVE_CHROMIUM = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",  # containers give /dev/shm little room
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


@dataclass
class LocalWorkspace:
    url: str
    process: Launched
    started: float  # time.monotonic() when the command started
    log: Path


@contextlib.asynccontextmanager
async def fixbot_local(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[LocalWorkspace]:
    """`fixbot local ARGS` in `root`, with no Slack settings at all (through
    tests/launcher.py); stopped with SIGTERM."""
    port = free_port()
    environment = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(root / "home"),
        "FIXBOT_HTTP_PORT": str(port),
        "FIXBOT_WORKDIR": str(root / "work"),
        "LOG_FORMAT": "console",
        **(env or {}),
    }
    log = root / "fixbot-local.log"
    started = time.monotonic()
    process = launch("fixbot", "local", *args, cwd=root, env=environment, stdout=log)
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
async def local(tmp_path: Path) -> AsyncIterator[LocalWorkspace]:
    """`fixbot local --demo`: no Slack, no model key, no fixbot.yml."""
    async with fixbot_local(tmp_path, "--demo") as workspace:
        yield workspace


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest.mark.long
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


async def test_with_a_key_and_a_repository_real_work_runs_there(tmp_path: Path) -> None:
    origin = make_shop_repo(tmp_path)
    config = {
        "repos": [
            {
                "name": "acme/shop",
                "clone_url": str(origin),  # a plain local path
                "test_command": TEST_COMMAND,
            }
        ]
    }
    (tmp_path / "fixbot.yml").write_text(yaml.safe_dump(config))
    async with ScriptedModel() as model:
        model.script(
            [[structured(plan_data())]], match="Plan a fix for the problem in the report below"
        )
        env = {"ANTHROPIC_API_KEY": "sk-ant-local-test", "ANTHROPIC_BASE_URL": model.base_url}
        async with fixbot_local(tmp_path, env=env) as local, httpx.AsyncClient() as client:
            first = await _snapshot(client, local.url)
            assert first["demo"] is False
            assert first["example_command"] == "/fix what is wrong repo:acme/shop"
            command = {"user": "U_ADA", "channel": "C_GENERAL"}
            command["text"] = "/fix prices go negative repo:acme/shop"
            answer = await client.post(f"{local.url}ui/command", json=command)
            assert answer.status_code == 200
            for _ in range(1200):  # a bounded poll: about two minutes
                messages = (await _snapshot(client, local.url))["channels"][0]["messages"]
                texts = [reply["text"] for message in messages for reply in message["replies"]]
                if any(text.startswith("Plan v1") for text in texts):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"no plan in the thread: {texts}")
        assert model.unexpected == []
        assert "in the repository acme/shop" in json.dumps(model.requests[-1])


async def _snapshot(client: httpx.AsyncClient, url: str, user: str = "U_ADA") -> dict[str, Any]:
    """The first snapshot the page's event stream sends."""
    async with client.stream("GET", f"{url}ui/events", params={"user": user}) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                return dict(json.loads(line.removeprefix("data: ")))
    raise AssertionError("the event stream ended without a snapshot")


async def _texts_seen(page: Page, ts: str | None) -> list[str]:
    return list(await page.evaluate("ts => window.seenTexts[ts] || []", ts))


async def _screenshot(page: Page, tmp_path: Path, name: str) -> None:
    await page.screenshot(path=tmp_path / name)
    if os.environ.get("FIXBOT_DOCS_SCREENSHOTS") == "1" and name != "local-diff.png":
        shutil.copyfile(tmp_path / name, ROOT / "docs" / name)


async def _wait_ready(url: str, process: Launched, log: Path) -> None:
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
