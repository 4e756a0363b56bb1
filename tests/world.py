"""A whole world on loopback for end-to-end tests: local Slack, a scripted model, Sentry,
GitHub and Jira stand-ins, a real git repository with a seeded bug, and the real Fixbot
started as `python app.py` in its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from fakes.anthropic import ScriptedModel
from fakes.github import FakeGitHub
from fakes.jira import FakeJira
from fakes.sentry import FakeSentry
from fakes.slack import LocalSlack
from launcher import Launched, launch

ROOT = Path(__file__).resolve().parent.parent
# The shop's tests, run with the test venv's pytest; without its plugins (asyncio, xdist,
# playwright…) a run starts in half the time, and there are a few hundred runs.
PYTEST = f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider"
TEST_COMMAND = f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {PYTEST}"
App = Launched | subprocess.Popen[bytes]
CHANNEL = "C_GENERAL"

SHOP_PRICING = '''\
def apply_discount(price: float, percent: float) -> float:
    """Price after a percentage discount."""
    return price - price * percent
'''

SHOP_TEST = """\
from shop.pricing import apply_discount


def test_no_discount():
    assert apply_discount(100.0, 0) == 100.0
"""

FIXED_PRICING = '''\
def apply_discount(price: float, percent: float) -> float:
    """Price after a percentage discount."""
    return price - price * percent / 100
'''

NEW_TEST = """\
from shop.pricing import apply_discount


def test_percent_is_a_percentage():
    assert apply_discount(200.0, 10) == 180.0
"""


ENV_DUMP_CONFTEST = """\
import os
import pathlib

dump = pathlib.Path(__file__).resolve().parent.parent / f"env-{os.getpid()}.txt"
try:
    dump.write_text("\\n".join(f"{k}={v}" for k, v in sorted(os.environ.items())))
except OSError:  # in the sandbox: nothing outside the checkout is writable
    pass
"""


def git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Dev",
        "GIT_AUTHOR_EMAIL": "dev@example.com",
        "GIT_COMMITTER_NAME": "Dev",
        "GIT_COMMITTER_EMAIL": "dev@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def make_shop_repo(root: Path) -> Path:
    """A bare repository `shop.git` whose main branch has a discount bug and one test."""
    source = root / "shop-src"
    (source / "shop").mkdir(parents=True)
    (source / "tests").mkdir()
    (source / "shop" / "__init__.py").write_text("")
    (source / "shop" / "pricing.py").write_text(SHOP_PRICING)
    (source / "tests" / "test_pricing.py").write_text(SHOP_TEST)
    # Every test run tries to leave a dump of its environment beside the checkout: with
    # `sandbox: off` it can, so tests can prove what reaches the agent's Bash and Fixbot's
    # own test runs; in the sandbox it cannot write there at all.
    (source / "conftest.py").write_text(ENV_DUMP_CONFTEST)
    git("init", "-q", "-b", "main", cwd=source)
    git("add", "-A", cwd=source)
    git("commit", "-q", "-m", "Shop with a discount bug", cwd=source)
    bare = root / "shop.git"
    git("clone", "-q", "--bare", str(source), str(bare), cwd=root)
    return bare


@dataclass
class World:
    """The servers, the repository and the running app, for one test."""

    root: Path
    slack: LocalSlack
    model: ScriptedModel
    sentry: FakeSentry
    github: FakeGitHub
    jira: FakeJira
    origin: Path
    env: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    processes: dict[int, App] = field(default_factory=dict)  # by replica
    # Start `python app.py` itself rather than a launch (tests/launcher.py): a launched
    # process's /proc/<pid>/environ is the launcher's, not the settings' (containment).
    script: bool = False
    log_paths: dict[int, Path] = field(default_factory=dict)  # each replica's latest log

    @property
    def workdir(self) -> Path:
        return self.root / "work"

    def worktree(self, branch: str) -> Path:
        return self.workdir / "tasks" / branch.replace("/", "__")

    @property
    def process(self) -> App | None:
        """The app's process (replica 0), while it runs."""
        return self.processes.get(0)

    @property
    def log_path(self) -> Path | None:
        return self.log_paths.get(0)

    async def start_app(self, *, wait: bool = True, replica: int = 0) -> None:
        """Start `python app.py` with this world's settings, as a person would (through
        tests/launcher.py, which has its imports done already).

        Replicas 0, 1, … may run at once on one database, each with its own Socket Mode
        connection and log; `wait` waits until every running replica is connected.
        """
        if replica in self.processes:
            raise RuntimeError(f"replica {replica} is already running")
        (self.root / "fixbot.yml").write_text(yaml.safe_dump(self.config))
        log_path = self.root / f"app-{len(list(self.root.glob('app-*.log')))}.log"
        self.log_paths[replica] = log_path
        log_path.touch()  # now, so that the next start takes the next name
        if self.script:
            with log_path.open("wb") as log:
                self.processes[replica] = subprocess.Popen(
                    [sys.executable, str(ROOT / "app.py")],
                    cwd=self.root,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        else:
            self.processes[replica] = launch("app", cwd=self.root, env=self.env, stdout=log_path)
        if wait:
            await self.slack.wait_connected(n=len(self.processes), timeout=30)

    async def stop_app(
        self, sig: int = signal.SIGTERM, timeout: float = 30, *, replica: int | None = None
    ) -> int:
        """Stop every replica (or just `replica`); returns the exit code, the first nonzero
        one of several. Kills the whole process group of one that hangs."""
        chosen = list(self.processes) if replica is None else [replica]
        stopping = {n: self.processes.pop(n) for n in chosen if n in self.processes}
        codes = await asyncio.gather(*(_stop(p, sig, timeout) for p in stopping.values()))
        for number in stopping:
            hung = [line for line in self.app_log(number).splitlines() if line[:1] != "{"]
            if any("asyncio tasks at SIGUSR1" in line for line in hung):
                # Shown in pytest's summary even when the test passes.
                message = f"replica {number} did not stop: " + "\n".join(hung[-40:])
                warnings.warn(message, stacklevel=2)
        return next((code for code in codes if code != 0), 0)

    def app_log(self, replica: int = 0) -> str:
        path = self.log_paths.get(replica)
        return path.read_text(errors="replace") if path else ""


async def _stop(process: App, sig: int, timeout: float) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        code = await asyncio.to_thread(process.wait, timeout)
    except subprocess.TimeoutExpired:
        code = -9
        if isinstance(process, Launched):  # what it was stuck on, into its log
            process.send_signal(signal.SIGUSR1)
            await asyncio.sleep(1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return code


@contextlib.asynccontextmanager
async def make_world(root: Path) -> AsyncIterator[World]:
    async with (
        LocalSlack() as slack,
        ScriptedModel() as model,
        FakeSentry() as sentry,
        FakeGitHub() as github,
        FakeJira() as jira,
    ):
        origin = make_shop_repo(root)
        github.add_repo("acme/shop", origin, default_branch="main")
        world = World(root, slack, model, sentry, github, jira, origin)
        world.env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(root / "home"),
            "SLACK_BOT_TOKEN": slack.bot_token,
            "SLACK_APP_TOKEN": slack.app_token,
            "SLACK_API_URL": slack.api_url,
            "DATABASE_URL": f"sqlite+aiosqlite:///{root}/fixbot.db",
            "FIXBOT_CONFIG": str(root / "fixbot.yml"),
            "FIXBOT_WORKDIR": str(root / "work"),
            "FIXBOT_HTTP_PORT": "0",
            "SENTRY_URL": sentry.url,
            "SENTRY_AUTH_TOKEN": "sentry-token",
            "SENTRY_ORG": "acme",
            "GITHUB_API_URL": github.url,
            "GITHUB_TOKEN": "github-token",
            "ANTHROPIC_API_KEY": "sk-ant-local-test",
            "ANTHROPIC_BASE_URL": model.base_url,
            "LOG_FORMAT": "json",
        }
        world.config = {
            "repos": [
                {
                    "name": "acme/shop",
                    "clone_url": origin.as_uri(),
                    "default_branch": "main",
                    "sentry_projects": ["shop-backend"],
                    "jira_projects": ["SHOP"],
                    "test_command": TEST_COMMAND,
                }
            ],
            "approvers": [],
            "alert_channels": [CHANNEL],
            # A stop cancels running steps after 2 s rather than 20: their jobs are resumed
            # at the next start like after any stop, and each teardown is ~20 s shorter.
            "limits": {
                "planning_timeout_s": 120,
                "execution_timeout_s": 180,
                "shutdown_grace_s": 2,
                # A step's passing failure is tried again after 0.5 s, 1 s, 2 s…, not 5, 10, 20.
                "retry_backoff_s": 0.5,
            },
            # Steps run in the app's own process: a worker process costs ~2 CPU-seconds to
            # start in every test; tests/test_workers.py runs the default (processes: 1).
            "workers": {"processes": 0},
        }
        try:
            yield world
        finally:
            await world.stop_app()
            assert slack.violations == [], f"Slack would reject: {slack.violations}"


def seed_sentry_issue(world: World, short_id: str = "SHOP-1") -> str:
    return world.sentry.add_issue(
        short_id=short_id,
        project="shop-backend",
        title="AssertionError: discount made the price negative",
        culprit="shop.pricing in apply_discount",
        exception=("AssertionError", "price -1800.0 is negative"),
        frames=[
            {
                "filename": "shop/pricing.py",
                "abs_path": "/app/shop/pricing.py",
                "function": "apply_discount",
                "lineno": 3,
                "in_app": True,
                "context_line": "    return price - price * percent",
            }
        ],
    )


def plan_data(**changes: Any) -> dict[str, Any]:
    plan = {
        "summary": "apply_discount treats percent as a fraction; divide by 100.",
        "root_cause": "shop/pricing.py:3 multiplies by percent instead of percent / 100.",
        "evidence": ["shop/pricing.py:3"],
        "files": ["shop/pricing.py", "tests/test_discount.py"],
        "test_plan": "tests/test_discount.py: apply_discount(200, 10) == 180.",
        "change": "Divide percent by 100 in apply_discount.",
        "risk": "Low: one expression.",
        "out_of_scope": "Rounding of prices.",
    }
    plan.update(changes)
    return plan


def plan_markdown() -> str:
    return textwrap.dedent(
        """\
        # Plan
        ## Summary
        apply_discount treats percent as a fraction.
        ## Root cause
        shop/pricing.py:3
        """
    )
