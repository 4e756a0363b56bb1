"""The real world: unusable references, the vendors' own webhook payloads, a repo's setup.

An unusable reference is answered privately before anything is posted; Sentry's
integration platform webhooks (payloads from Sentry's docs) become alerts like Slack's,
and GitHub's (octokit's examples) reach the task of their pull request; a repository's
`setup_command` builds the environment that the agent's and Fixbot's test runs use.
Most run end to end; a payload the routes are proven with elsewhere goes through them
in-process (test_webhooks's `webhooks`).
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from memory import memory_settings
from test_cli import fixbot
from test_conversation import TITLE, plan_script, thread_texts, wait_for_plan
from test_core_loop import script_execution, script_planning, start_plan
from test_core_loop import thread_texts as core_thread_texts
from test_webhooks import PULL, PULL_URL, count, github_signed, post, sentry_signed, start, webhooks
from world import CHANNEL, World, seed_sentry_issue

from bot.cli import _check_setup
from bot.models import State
from bot.redact import Redactor
from storage.tables import Alert, Task

PAYLOADS = Path(__file__).parent / "payloads"


def sentry_payload(name: str) -> Any:
    return json.loads((PAYLOADS / "sentry" / name).read_text())


async def typed(world: World, text: str, user: str = "U_ALICE") -> str:
    """Type `/fix text` and return the private answer."""
    seen = len(world.slack.ephemerals(user))
    await world.slack.slash_command(text, user=user)
    answers = await world.slack.wait_for(
        lambda: world.slack.ephemerals(user)[seen:], timeout=60, what=f"an answer to {text}"
    )
    return str(answers[-1]["text"])


def nothing_started(world: World) -> None:
    assert world.slack.messages(CHANNEL) == []
    assert count(world, "tasks") == 0 and count(world, "jobs") == 0


async def test_an_unknown_sentry_short_id_is_answered_privately(world: World) -> None:
    seed_sentry_issue(world)
    world.config["limits"]["reference_timeout_s"] = 60  # a loaded machine still answers
    await world.start_app()

    answer = await typed(world, "SHOP-ZZZZ9")

    assert "Sentry has no `SHOP-ZZZZ9`" in answer and "short id or the URL" in answer
    nothing_started(world)

    # `@fixbot fix` with a link as Slack delivers it goes through the same parser and lookup.
    link = f"<{world.sentry.url}/organizations/acme/issues/999/?referrer=slack|the crash>"
    await world.slack.mention(CHANNEL, f"fix {link}")
    answers = await world.slack.wait_for(lambda: world.slack.ephemerals("U_ALICE")[1:])
    assert "Sentry has no `999`" in answers[-1]["text"]
    assert not [m for m in world.slack.messages(CHANNEL) if m.get("bot_id") == "BFIXBOT"]
    assert count(world, "tasks") == 0


async def test_an_unmapped_project_is_answered_privately(world: World) -> None:
    world.env.update(
        JIRA_URL=world.jira.url, JIRA_EMAIL=world.jira.email, JIRA_API_TOKEN=world.jira.token
    )
    world.jira.add_issue("OPS-7", "Backups fail on Sundays")
    world.sentry.add_issue(short_id="BILLING-7", project="billing-api", title="KeyError")
    world.config["limits"]["reference_timeout_s"] = 60
    await world.start_app()

    # A Jira key Sentry does not know: Jira has it, in a project no repository claims.
    assert "The Jira project `OPS` is not mapped" in await typed(world, "OPS-7")
    # The same as a link, as Slack delivers it: refused without asking anyone.
    link = f"<{world.jira.url}/browse/OPS-7|OPS-7>"
    assert "`jira_projects`" in await typed(world, link)
    # A Sentry issue of a project no repository claims, and where to map it.
    billing = await typed(world, "BILLING-7")
    assert "`billing-api` is not mapped" in billing and "sentry_projects" in billing
    nothing_started(world)


def event_alert(world: World, issue_id: str) -> bytes:
    """Sentry's documented `event_alert` payload, naming the fake's issue."""
    payload = sentry_payload("event_alert.triggered.json")
    event = payload["data"]["event"]
    event["issue_id"] = issue_id
    event["issue_url"] = f"{world.sentry.url}/api/0/issues/{issue_id}/"
    event["web_url"] = (
        f"{world.sentry.url}/organizations/acme/issues/{issue_id}/events/{event['event_id']}/"
    )
    return json.dumps(payload).encode()


async def test_a_sentry_event_alert_webhook_is_one_task(world: World) -> None:
    issue_id = seed_sentry_issue(world)
    plan_script(world, ref=issue_id)
    hooks = await start(world, auto_plan=True)

    body = event_alert(world, issue_id)
    answer = await post(f"{hooks}/sentry", body, sentry_signed("event_alert", body))
    assert answer == (200, {"ok": True})
    alert = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    plan = await wait_for_plan(world, alert["ts"])
    assert TITLE in json.dumps(plan)

    again = event_alert(world, issue_id)  # the rule fires again: another delivery
    assert (await post(f"{hooks}/sentry", again, sentry_signed("event_alert", again)))[0] == 200
    await world.slack.wait_for(
        lambda: "Seen again (1)" in thread_texts(world, alert["ts"]), what="the count"
    )
    assert count(world, "tasks") == 1 and len(world.slack.messages(CHANNEL)) == 1


async def test_a_regressed_issue_webhook_is_an_alert(tmp_path: Path) -> None:
    payload = sentry_payload("issue.created.json")
    payload["action"] = "unresolved"
    payload["data"]["issue"] |= {"shortId": "SHOP-1", "substatus": "regressed"}
    body = json.dumps(payload).encode()
    async with webhooks(tmp_path) as hooks:
        assert await hooks.post("sentry", body, sentry_signed("issue", body)) == (200, {"ok": True})

        (alert,) = hooks.threads.parents()
        assert "regressed" in alert.text and "SHOP-1" in alert.text
        assert len(hooks.threads.offers(alert.ts)) == 1  # `Plan a fix`
        assert await hooks.count(Alert) == 1 and await hooks.count(Task) == 0


@pytest.mark.long
async def test_setup_command_builds_the_environment_the_tests_run_in(world: World) -> None:
    # A venv without pip (nothing downloaded) that finds this interpreter's pytest, and
    # says on every start which environment it runs in (a .pth line runs at start-up).
    site_packages = Path(sysconfig.get_paths()["purelib"])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    own = f'"$FIXBOT_ENV/lib/{version}/site-packages"'
    says = 'import os, sys; sys.stderr.write("ENV-CHECK " + os.environ["VIRTUAL_ENV"] + chr(10))'
    repo = world.config["repos"][0]
    repo["setup_command"] = (
        f'{sys.executable} -m venv --without-pip "$FIXBOT_ENV" && '
        f"echo {site_packages} > {own}/host.pth && "
        f"printf '%s\\n' '{says}' > {own}/says.pth && "
        'echo ran >> "$FIXBOT_ENV/setup-runs"'  # the sandbox lets it write only there
    )
    repo["test_command"] = "python -m pytest -q -p no:cacheprovider"  # the env's python
    seed_sentry_issue(world)
    script_planning(world)
    script_execution(world)
    await world.start_app()

    thread_ts, plan = await start_plan(world)
    await world.slack.click_button(CHANNEL, plan["ts"], "approve", user="UBOB01")
    await world.slack.wait_for(
        lambda: any("Pull request ready" in t for t in core_thread_texts(world, thread_ts)),
        timeout=120,
        what="the pull request",
    )

    (environment,) = [p for p in (world.workdir / "envs" / "acme__shop").iterdir() if p.is_dir()]
    assert (environment / "setup-runs").read_text() == "ran\n"  # once, for both steps' runs
    assert (environment / "bin" / "python").exists()
    said = f"ENV-CHECK {environment}"
    # The agent's test runs (their output went back to the model) ran in it...
    assert any(said in json.dumps(body) for body in world.model.requests)
    # ...and so did Fixbot's own runs, whose output is the pull request's evidence.
    assert said in world.github.pulls("acme/shop")[0].body


async def test_doctor_runs_the_setup_once_and_says_how_long_it_took(world: World) -> None:
    repo = world.config["repos"][0]
    repo["setup_command"] = 'mkdir -p "$FIXBOT_ENV/bin" && echo installed'
    first = await fixbot(world, "doctor")
    setup = next(line for line in first.lines if "setup acme/shop" in line)
    assert setup.startswith("✓") and " ran in " in setup

    # The doctor's setup check again, in-process on the same work folder: each `fixbot
    # doctor` costs a Claude Code start, and the line is the check's own rendering.
    async def check_setup() -> str:
        settings = memory_settings(repos=[repo], fixbot_workdir=world.workdir)
        redact = Redactor(settings.secret_values())
        return str(await _check_setup(settings, settings.repos[0], redact))

    assert "cached" in await check_setup()
    repo["setup_command"] = "echo 'ERROR: No matching distribution found for flask==99'; exit 1"
    broken = await check_setup()
    assert broken.startswith("✗") and "No matching distribution" in broken


async def test_a_pull_request_closed_webhook_as_github_sends_it(tmp_path: Path) -> None:
    # octokit's example of `pull_request` `closed` (not merged), naming a task's pull.
    payload = json.loads((PAYLOADS / "github" / "pull_request.closed.json").read_text())
    payload["number"] = payload["pull_request"]["number"] = PULL
    payload["repository"]["full_name"] = "acme/shop"
    body = json.dumps(payload).encode()
    async with webhooks(tmp_path) as hooks:
        task = await hooks.seeded(State.AWAITING_APPROVAL, pr_number=PULL, pr_url=PULL_URL)

        answer = await hooks.post("github", body, github_signed("pull_request", body))
        assert answer == (200, {"ok": True})

        assert hooks.said(task.thread_ts, "was closed without merging by Codertocat") is not None
        assert (await hooks.machine.workflow.store.fresh(task)).state == State.CANCELLED
