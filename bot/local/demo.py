"""The demo: a bundled sample repository with a seeded bug, and a scripted model that fixes it.

`fixbot local --demo` needs no API key: the real Claude Code CLI runs every step as usual,
but talks to `DemoModel`, which answers each conversation from a script made when the
conversation starts (planning, revising after feedback, implementing). The page labels
every Fixbot message "demo: scripted model".
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

from agents.plan import Plan
from agents.planning import render_plan
from bot.local.scripted_model import Script, ScriptedModel, Turn, pause, structured, text, tool
from repos.config import RepoConfig
from repos.workspace import git

SAMPLE_REPOSITORY = Path(__file__).resolve().parent / "demo" / "shop"
REPO_NAME = "demo/shop"
EXAMPLE_COMMAND = f"/fix a 10% discount takes off far too much repo:{REPO_NAME}"
STEP_PAUSE_S = 1.5  # each scripted turn takes a moment, so the status message visibly ticks
WORKING_DIRECTORY = re.compile(r"Primary working directory: (\S+)")

PLAN = Plan(
    summary="apply_discount treats `percent` as a fraction; divide it by 100.",
    root_cause=(
        "shop/pricing.py:6 computes `price - price * percent`, so a 10% discount "
        "takes off ten times the price."
    ),
    evidence=["shop/pricing.py:6", "tests/test_pricing.py:7"],
    files=["shop/pricing.py", "tests/test_discount.py"],
    test_plan="tests/test_discount.py: apply_discount(200, 10) == 180 (fails today: -1800).",
    change="Divide `percent` by 100 in apply_discount.",
    risk="Low: one expression; callers already pass percentages.",
    out_of_scope="Rounding prices to cents.",
)

FIXED_PRICING = '''\
"""Prices in the shop."""


def apply_discount(price: float, percent: float) -> float:
    """Price after a percentage discount."""
    return price - price * percent / 100


def total(prices: list[float]) -> float:
    """The basket's total."""
    return sum(prices)
'''

NEW_TEST = """\
import unittest

from shop.pricing import apply_discount


class DiscountTest(unittest.TestCase):
    def test_percent_is_a_percentage(self):
        self.assertEqual(apply_discount(200.0, 10), 180.0)
"""


def demo_repo(test_command: str, clone_url: str) -> RepoConfig:
    """The sample repository as fixbot.yml would list it."""
    return RepoConfig(name=REPO_NAME, clone_url=clone_url, test_command=test_command)


async def make_sample_repository(root: Path) -> Path:
    """A bare repository `root/shop.git` holding the sample (main: the seeded bug)."""
    source = root / "shop-src"
    bare = root / "shop.git"
    await asyncio.to_thread(shutil.copytree, SAMPLE_REPOSITORY, source)
    identity = ("-c", "user.name=Fixbot demo", "-c", "user.email=demo@fixbot.invalid")
    await git("init", "--quiet", "--initial-branch=main", cwd=source)
    await git("add", "--all", cwd=source)
    await git(*identity, "commit", "--quiet", "-m", "A shop with a discount bug", cwd=source)
    await git("clone", "--quiet", "--bare", str(source), str(bare), cwd=root)
    await asyncio.to_thread(shutil.rmtree, source)
    return bare


class DemoModel(ScriptedModel):
    """A scripted model that writes each conversation's script when the conversation starts."""

    def __init__(self, test_command: str) -> None:
        super().__init__()
        self.test_command = test_command

    def _script_for(self, body: dict[str, Any], session_id: str | None) -> Script | None:
        script = super()._script_for(body, session_id)
        if script is not None and not script.exhausted:
            return script
        turns = self._turns(body)
        if turns is None:
            return script
        if script is None:  # a new conversation: its script, claimed at once
            self.script(turns)
            return super()._script_for(body, session_id)
        script.turns.extend(turns)  # a resumed conversation (a revision) goes on
        return script

    def _turns(self, body: dict[str, Any]) -> list[Turn] | None:
        cwd = _working_directory(body)
        if cwd is None:
            return None
        prompt = _last_prompt(body)
        wait = pause(STEP_PAUSE_S)
        if prompt.startswith("Plan a fix for"):
            return [
                [wait, tool("Read", {"file_path": f"{cwd}/shop/pricing.py"})],
                [wait, tool("Read", {"file_path": f"{cwd}/tests/test_pricing.py"})],
                [
                    wait,
                    tool("Write", {"file_path": f"{cwd}/PLAN.md", "content": render_plan(PLAN)}),
                ],
                [structured(PLAN.model_dump())],
            ]
        if prompt.startswith("Revise the fix plan"):
            revised = PLAN.model_copy(
                update={
                    "summary": PLAN.summary + " Revised after the thread's feedback.",
                    "out_of_scope": "Rounding prices to cents (as the thread asked: not now).",
                }
            )
            return [
                [
                    wait,
                    tool("Write", {"file_path": f"{cwd}/PLAN.md", "content": render_plan(revised)}),
                ],
                [structured(revised.model_dump())],
            ]
        if prompt.startswith("Implement the approved plan"):
            return [
                [
                    wait,
                    tool(
                        "Write", {"file_path": f"{cwd}/tests/test_discount.py", "content": NEW_TEST}
                    ),
                ],
                [wait, tool("Bash", {"command": self.test_command})],
                [
                    wait,
                    tool(
                        "Write", {"file_path": f"{cwd}/shop/pricing.py", "content": FIXED_PRICING}
                    ),
                ],
                [wait, tool("Bash", {"command": self.test_command})],
                [text("Fixed: `percent` is now divided by 100; the new test passes.")],
            ]
        return None


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [b.get("text", "") for b in content or [] if isinstance(b, dict)]


def _working_directory(body: dict[str, Any]) -> str | None:
    """The step's worktree, from the environment Claude Code describes to the model."""
    texts = _texts(body.get("system"))
    for message in body.get("messages", []):
        texts += _texts(message.get("content"))
    found = WORKING_DIRECTORY.search("\n".join(texts))
    return found.group(1) if found else None


def _last_prompt(body: dict[str, Any]) -> str:
    """The newest thing a person (through Fixbot) asked: the last user text that is no
    system reminder."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") != "user":
            continue
        for candidate in _texts(message.get("content")):
            candidate = candidate.strip()
            if candidate and not candidate.startswith("<system-"):
                return candidate
    return ""
