"""Verification: Fixbot proves red → green itself, whatever the agent claimed.

The new tests must fail on the base commit, pass with the fix, and the whole suite must
pass with the fix. Then the existing tests are checked against the executor's hand on how
tests run: an existing test that passed on the base commit and fails or is gone with the
fix, run with the base commit's test set-up, fails verification. With pytest that is per
test (its JUnit XML report): the suite's outcomes on the base commit (run once per base
commit) against those of the suite run above when the fix left the test set-up
(`conftest.py`, pytest and tox settings) alone, else of a further run with the base set-up
put back. With another test command, that further run must pass as a whole. Changes to
how tests run (and deleted or newly skipped tests) are listed in `test_changes` for a
person to approve. Each run is a shell command in its own process group, bounded by a
timeout that kills the whole group, and inside the sandbox (repos/sandbox.py): the code
under test was written by an agent, so it runs with no network (but the repository's
`network_allow` hosts), no view of other processes, and only its checkout writable.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from repos import process
from repos.base_checkouts import base_checkout
from repos.sandbox import Endpoint, Sandbox
from repos.test_changes import (
    Outcomes,
    broken_and_skipped,
    infrastructure_changes,
    is_infrastructure,
    ran_and_passed,
    take_outcomes,
    with_report,
)
from repos.workspace import changed_files, git, remove_tree

if TYPE_CHECKING:  # repos/environment.py runs its setup through this module
    from repos.environment import RepoEnvironment

OUTPUT_LIMIT = 20_000  # bytes of output kept: the tail, where test runners summarise

NO_TEST = "the change adds or changes no test"
ALREADY_PASS = "the new tests already pass without the fix"


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int  # -N: killed by signal N
    output: str  # stdout and stderr interleaved, the last ~20 KB
    duration_s: float
    timed_out: bool = False

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class Verification:
    """The evidence for one fix: the three runs, and whether they prove it."""

    ok: bool
    reason: str
    test_files: list[str] = field(default_factory=list)
    red: CommandResult | None = None
    green: CommandResult | None = None
    suite: CommandResult | None = None
    # The suite with the fix but the base commit's test set-up (see the module's text).
    guarded: CommandResult | None = None
    test_changes: list[str] = field(default_factory=list)  # changes to how tests run

    @staticmethod
    def excerpt(result: CommandResult | None, lines: int = 15) -> str:
        """The last `lines` non-blank lines of a run's output, for a PR body or a thread."""
        if result is None:
            return ""
        text = _ANSI.sub("", result.output)
        kept = [line.rstrip() for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])


Runner = Callable[[str, Path], Awaitable[CommandResult]]
"""Runs a command in a checkout, the way every run of one verification is made."""

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


async def run_command(
    command: str,
    cwd: Path,
    timeout: float,  # noqa: ASYNC109
    *,
    sandbox: Sandbox,
    reach: Sequence[Endpoint] = (),
    environment: RepoEnvironment | None = None,
) -> CommandResult:
    """Run a shell command in the sandbox, in its own process group; on timeout, kill the
    whole group (and with it the sandbox). With the repository's `environment`
    (repos/environment.py) its variables are set and its directory is readable inside."""
    # Inside, HOME is the sandbox's private /tmp: the host's home is not there.
    home = {"HOME": "/tmp"} if sandbox.enabled else {}
    readable = [environment.path] if environment else []
    variables = environment.variables if environment else {}
    async with sandbox.confine(
        writable=[cwd], readable=readable, reach=reach, setenv=home
    ) as confinement:
        return await run_process(
            command, confinement.argv(["/bin/sh", "-c", command]), cwd, timeout, variables
        )


async def run_process(
    command: str,
    argv: list[str],
    cwd: Path,
    timeout: float,  # noqa: ASYNC109
    variables: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run `argv` (`command`, already confined) with the allowlisted environment and
    `variables`, in its own process group; on timeout, kill the whole group."""
    # CI: test runners neither watch nor prompt. No bytecode: no stray files in the diff.
    env = {
        **process.inherited_environment(),
        "CI": "true",
        "PYTHONDONTWRITEBYTECODE": "1",
        **(variables or {}),
    }
    result = await process.run(
        argv, cwd=cwd, env=env, timeout=timeout, merge_stderr=True, keep=OUTPUT_LIMIT
    )
    return CommandResult(
        command=command,
        exit_code=result.exit_code,
        output=result.stdout,
        duration_s=result.duration_s,
        timed_out=result.timed_out,
    )


# Which files are tests ------------------------------------------------------------------

_TEST_NAME = re.compile(
    r"""^(
        test_.+\.py | .+_tests?\.py                       # pytest, unittest
      | .+\.(test|spec)\.(js|jsx|ts|tsx|mjs|cjs|mts|cts)  # jest, vitest, mocha
      | .+_(spec|test)\.rb | test_.+\.rb                  # rspec, minitest
      | .+_test\.go | .+_test\.exs | .+_test\.dart
      | .+(Test|Tests|Spec|IT)\.(java|kt|scala|cs|swift|php)
      | test_.+\.sh | .+\.bats
    )$""",
    re.VERBOSE,
)
_TEST_DIRS = {"test", "tests", "__tests__", "spec", "specs", "testing"}
_CODE_SUFFIXES = {
    ".py", ".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs", ".rb", ".go", ".rs",
    ".java", ".kt", ".scala", ".cs", ".swift", ".php", ".ex", ".exs", ".dart",
}  # fmt: skip
_SUPPORT_NAMES = {"conftest.py", "__init__.py"}


def test_files(paths: list[str]) -> list[str]:
    """The paths that are tests: by name (test_*.py, *.test.ts, *_spec.rb, …) or as
    code files in a test folder (tests/, __tests__/, spec/, …)."""
    return [path for path in paths if _is_test(PurePosixPath(path))]


# Named like a test: tell pytest not to collect it where a test module imports it.
test_files.__test__ = False  # type: ignore[attr-defined]


def _is_test(path: PurePosixPath) -> bool:
    if path.name in _SUPPORT_NAMES:
        return False
    if _TEST_NAME.match(path.name):
        return True
    return path.suffix in _CODE_SUFFIXES and _in_test_dir(path)


def _in_test_dir(path: PurePosixPath) -> bool:
    return any(part.lower() in _TEST_DIRS for part in path.parts[:-1])


def _support_files(paths: list[str]) -> list[str]:
    """Files the new tests may need on the base commit: fixtures, conftest, test data."""
    support = []
    for path in paths:
        pure = PurePosixPath(path)
        if _is_test(pure):
            continue
        if pure.name == "conftest.py" or _in_test_dir(pure):
            support.append(path)
    return support


# Red, green, suite ----------------------------------------------------------------------


async def verify_fix(
    worktree: Path,
    base_commit: str,
    test_command: str,
    timeout: float,  # noqa: ASYNC109 (applies to each of the three runs)
    *,
    sandbox: Sandbox,
    reach: Sequence[Endpoint] = (),
    environment: RepoEnvironment | None = None,
    checkouts: Path | None = None,
) -> Verification:
    """Check the fix in `worktree` against `base_commit` with the repo's test command,
    every run in `sandbox` (reaching only `reach`, in the repository's `environment`).

    `checkouts`: the folder where checkouts of base commits are kept warm between
    verifications (repos/base_checkouts.py); None: a temporary one for this verification.
    """
    if checkouts is None:
        folder = Path(tempfile.mkdtemp(prefix="fixbot-base-"))
        try:
            return await verify_fix(
                worktree,
                base_commit,
                test_command,
                timeout,
                sandbox=sandbox,
                reach=reach,
                environment=environment,
                checkouts=folder,
            )
        finally:
            # Shielded: a cancelled verification still takes its checkouts away.
            await asyncio.shield(remove_tree(folder))
    changed_all = await changed_files(worktree, base_commit)
    changed = _existing(worktree, changed_all)
    tests = test_files(changed)
    if not tests:
        return Verification(ok=False, reason=NO_TEST)
    targeted = f"{test_command} {shlex.join(tests)}"
    copied = tests + _support_files(changed)

    def run(command: str, cwd: Path) -> Awaitable[CommandResult]:
        return run_command(
            command, cwd, timeout, sandbox=sandbox, reach=reach, environment=environment
        )

    red, _ = await _run_on_base(worktree, base_commit, copied, targeted, run, checkouts)
    if red.timed_out:
        reason = f"the new tests time out without the fix (after {timeout:g} s)"
        return Verification(ok=False, reason=reason, test_files=tests, red=red)
    if red.exit_code == 0:
        return Verification(ok=False, reason=ALREADY_PASS, test_files=tests, red=red)
    if _did_not_run(test_command, red.exit_code):
        reason = f"the new tests did not run without the fix (pytest exit {red.exit_code})"
        return Verification(ok=False, reason=reason, test_files=tests, red=red)

    deleted = sorted(set(changed_all) - set(changed))
    # With the test set-up untouched, the suite run itself can say how each test did.
    set_up_changed = any(map(is_infrastructure, changed_all))
    reported = None if set_up_changed else with_report(test_command)
    suite = await run(reported or test_command, worktree)
    after = take_outcomes(worktree) if reported else None
    # A passing suite whose report shows the new tests ran and passed is their green run
    # too; otherwise they run on their own, which also tells which of the two failed.
    if suite.passed and after is not None and ran_and_passed(after, tests):
        green = suite
    else:
        green = await run(targeted, worktree)
    if not green.passed:
        reason = f"the new tests {_failure(green, timeout)} with the fix"
        return Verification(ok=False, reason=reason, test_files=tests, red=red, green=green)
    if not suite.passed:
        reason = f"the test suite {_failure(suite, timeout)} with the fix"
        return Verification(
            ok=False, reason=reason, test_files=tests, red=red, green=green, suite=suite
        )
    guarded, broken, test_changes = await _existing_tests(
        worktree, base_commit, test_command, changed, deleted, timeout, after, run, checkouts
    )
    return Verification(
        ok=broken is None,
        reason=broken or "the new tests fail without the fix and pass with it; the suite passes",
        test_files=tests,
        red=red,
        green=green,
        suite=suite,
        guarded=guarded,
        test_changes=test_changes,
    )


async def _existing_tests(
    worktree: Path,
    base_commit: str,
    test_command: str,
    changed: list[str],
    deleted: list[str],
    timeout: float,  # noqa: ASYNC109 (only named in what it says)
    after: Outcomes | None,
    run: Runner,
    checkouts: Path,
) -> tuple[CommandResult | None, str | None, list[str]]:
    """Whether the existing tests hold with the fix, judged with the base commit's test
    set-up: the run that judged (when one was made here), why they do not hold (None when
    they do), and the changes to how tests run.

    `after`: per-test outcomes of the suite with the fix, when its test set-up is the base
    commit's already; otherwise the suite runs again with the base set-up put back.
    """
    infrastructure = [path for path in [*changed, *deleted] if is_infrastructure(path)]
    changes = await infrastructure_changes(worktree, base_commit, infrastructure)
    changes += [f"`{path}` deleted" for path in test_files(deleted)]
    reported = with_report(test_command)
    if reported is None and not changes:
        return None, None, changes  # the suite above ran with the base set-up already
    guarded: CommandResult | None = None
    if after is None:
        # The fix's code and its edits to existing tests; new test files stay out, so that
        # nothing new is imported into the run that judges the existing tests.
        listed = await git("ls-tree", "-r", "-z", "--name-only", base_commit, cwd=worktree)
        new_tests = set(test_files(changed)) - set(listed.split("\0"))
        code = [p for p in changed if not is_infrastructure(p) and p not in new_tests]
        removed = [path for path in deleted if not is_infrastructure(path)]
        guarded, after = await _run_on_base(
            worktree, base_commit, code, reported or test_command, run, checkouts, deleted=removed
        )
        if reported is None:
            if guarded.passed:
                return guarded, None, changes
            why = f"the suite {_failure(guarded, timeout)} with the base commit's test set-up"
            return guarded, why, changes
    assert reported is not None
    baseline, before = await _baseline(worktree, base_commit, reported, run, checkouts)
    if before is None or after is None:
        judged = guarded if after is None else baseline
        failed = f" ({_failure(judged, timeout)})" if judged is not None else ""
        return judged, f"the suite left no per-test report{failed}", changes
    broken, skipped = broken_and_skipped(before, after, deleted)
    changes += [f"`{test}` newly skipped" for test in skipped]
    if broken:
        names = ", ".join(f"`{test}`" for test in broken[:10])
        more = f" and {len(broken) - 10} more" if len(broken) > 10 else ""
        why = (
            f"existing tests that passed on the base commit fail or are gone with the fix "
            f"(run with the base commit's test set-up): {names}{more}"
        )
        return guarded, why, changes
    return guarded, None, changes


# Per-test outcomes of the suite on a base commit are the same for every fix of it: kept.
_BASELINES: dict[tuple[str, str], Outcomes] = {}
_BASELINES_KEPT = 64


async def _baseline(
    worktree: Path,
    base_commit: str,
    command: str,
    run: Runner,
    checkouts: Path,
) -> tuple[CommandResult | None, Outcomes | None]:
    """The suite's per-test outcomes on `base_commit` (and the run, when one was needed)."""
    key = (base_commit, command)
    if key in _BASELINES:
        return None, _BASELINES[key]
    result, outcomes = await _run_on_base(worktree, base_commit, [], command, run, checkouts)
    if outcomes is not None:
        if len(_BASELINES) >= _BASELINES_KEPT:
            del _BASELINES[next(iter(_BASELINES))]
        _BASELINES[key] = outcomes
    return result, outcomes


async def _run_on_base(
    worktree: Path,
    base_commit: str,
    files: list[str],
    command: str,
    run: Runner,
    checkouts: Path,
    *,
    deleted: list[str] | None = None,
) -> tuple[CommandResult, Outcomes | None]:
    """Run `command` with `run` in a clean checkout of `base_commit` from `checkouts`
    holding `files` (copied from the worktree) and without `deleted`; returns the run and
    its per-test report, if any."""
    async with base_checkout(checkouts, worktree, base_commit) as checkout:
        _copy(worktree, checkout, files)
        for path in deleted or ():
            (checkout / path).unlink(missing_ok=True)
        result = await run(command, checkout)
        return result, take_outcomes(checkout)


# Small local file operations: cheaper inline than a thread.


def _existing(worktree: Path, paths: list[str]) -> list[str]:
    """Drop deleted paths: only files still there can be tests or be copied."""
    return [path for path in paths if (worktree / path).is_file()]


def _copy(source: Path, target: Path, paths: list[str]) -> None:
    for path in paths:
        origin, destination = source / path, target / path
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.unlink(missing_ok=True)
        if origin.is_symlink():
            # A link stays a link: Fixbot never reads through it on the agent's behalf.
            destination.symlink_to(os.readlink(origin))
        else:
            destination.write_bytes(origin.read_bytes())


def _did_not_run(test_command: str, exit_code: int) -> bool:
    # pytest: 4 is a usage error (a path not found), 5 is "no tests collected".
    return "pytest" in test_command and exit_code in (4, 5)


def _failure(result: CommandResult, timeout: float) -> str:
    if result.timed_out:
        return f"time out (after {timeout:g} s)"
    return f"fail (exit {result.exit_code})"
