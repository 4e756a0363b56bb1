"""What the executor changed about how tests run, and what the tests' outcomes say.

The executor controls the files that decide how tests run (`conftest.py`, pytest's and
tox's configuration): with them it could break an existing test and hide the failure.
So Fixbot names those changes for a person to approve, and reads per-test outcomes
(pytest's JUnit XML report) from runs with the base commit's test set-up, which the
executor cannot have touched.
"""

from __future__ import annotations

import configparser
import os
import stat
import tomllib
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from repos.workspace import GitError, git

# Files that change how tests are found, run or reported wherever they are.
_INFRASTRUCTURE_NAMES = {
    "conftest.py",
    "pytest.ini",
    "tox.ini",
    "noxfile.py",
    ".coveragerc",
    "sitecustomize.py",
    "usercustomize.py",
}
# Shared configuration files: only their test sections count.
_CFG_SECTIONS = ("tool:pytest", "pytest", "tox", "coverage:")
_TOML_TABLES = ("pytest", "tox", "coverage")

REPORT_NAME = ".fixbot-test-report.xml"  # where pytest writes its JUnit XML in a checkout
_REPORT_LIMIT = 20_000_000  # bytes; a bigger report is not one pytest wrote for a test suite

Outcomes = dict[str, str]  # test id → "passed" | "failed" | "skipped"


def is_infrastructure(path: str) -> bool:
    """Whether `path` can change how tests run (the whole file, or a section of it)."""
    name = PurePosixPath(path).name
    return name in _INFRASTRUCTURE_NAMES or name in ("setup.cfg", "pyproject.toml")


async def infrastructure_changes(
    worktree: Path, base_commit: str, paths: Iterable[str]
) -> list[str]:
    """One line per change to how tests run, among the changed `paths`."""
    changes = []
    for path in paths:
        name = PurePosixPath(path).name
        if name in _INFRASTRUCTURE_NAMES:
            changes.append(f"`{path}` {_verb(worktree, path)}")
        elif name in ("setup.cfg", "pyproject.toml"):
            before = await _base_text(worktree, base_commit, path)
            file = worktree / path
            after = file.read_text(errors="replace") if file.is_file() else ""
            if _test_sections(name, before) != _test_sections(name, after):
                changes.append(f"`{path}` test settings {_verb(worktree, path)}")
    return changes


def with_report(test_command: str) -> str | None:
    """The command with a per-test report added, when it runs pytest; None otherwise."""
    if "pytest" not in test_command:
        return None
    return f"{test_command} --junitxml={REPORT_NAME} -o junit_family=xunit1"


def take_outcomes(checkout: Path) -> Outcomes | None:
    """Each test's outcome from the run's report, which is removed; None when the run left
    none readable."""
    report = checkout / REPORT_NAME
    try:
        # Never through a link the code under test left there, nor from a FIFO.
        descriptor = os.open(report, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with open(descriptor, "rb") as file:
            status = os.fstat(file.fileno())
            if not stat.S_ISREG(status.st_mode) or status.st_size > _REPORT_LIMIT:
                return None
            tree = ElementTree.parse(file)
    except (OSError, ElementTree.ParseError):
        return None
    finally:
        report.unlink(missing_ok=True)
    outcomes: Outcomes = {}
    for case in tree.iter("testcase"):
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            outcome = "failed"
        elif "skipped" in kinds:
            outcome = "skipped"
        else:
            outcome = "passed"
        test = f"{case.get('file') or case.get('classname')}::{case.get('name')}"
        # A test reported twice (an error in teardown after a pass) keeps the worse outcome.
        if outcomes.get(test) != "failed":
            outcomes[test] = outcome
    return outcomes


def ran_and_passed(outcomes: Outcomes, files: Iterable[str]) -> bool:
    """Whether tests of each of `files` ran (in the report) and none of them failed."""
    wanted = set(files)
    ran = {test.partition("::")[0] for test in outcomes}
    failed = any(
        outcome == "failed" and test.partition("::")[0] in wanted
        for test, outcome in outcomes.items()
    )
    return wanted <= ran and not failed


def broken_and_skipped(
    before: Outcomes, after: Outcomes, deleted: Iterable[str]
) -> tuple[list[str], list[str]]:
    """Tests that passed `before` and now fail or are gone, and those now skipped.

    Tests in `deleted` files are not "gone": their deletion is a change a person approves.
    """
    removed = set(deleted)
    broken, skipped = [], []
    for test, outcome in sorted(before.items()):
        if outcome != "passed" or test.partition("::")[0] in removed:
            continue
        now = after.get(test)
        if now == "skipped":
            skipped.append(test)
        elif now != "passed":
            broken.append(test)
    return broken, skipped


def _verb(worktree: Path, path: str) -> str:
    return "changed or added" if (worktree / path).exists() else "deleted"


async def _base_text(worktree: Path, base_commit: str, path: str) -> str:
    try:
        return await git("show", f"{base_commit}:{path}", cwd=worktree)
    except GitError:
        return ""  # added by the branch


def _test_sections(name: str, text: str) -> Any:
    """The test-related part of setup.cfg or pyproject.toml; the whole text if unreadable."""
    if name == "setup.cfg":
        parser = configparser.RawConfigParser()
        try:
            parser.read_string(text)
        except configparser.Error:
            return text
        return {
            section: dict(parser.items(section))
            for section in parser.sections()
            if section.startswith(_CFG_SECTIONS)
        }
    try:
        tool = tomllib.loads(text).get("tool", {})
    except tomllib.TOMLDecodeError:
        return text
    return {table: tool.get(table) for table in _TOML_TABLES}
