"""Red → green against a real tiny repo with a bug, run with the venv's own pytest."""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_process import alive_with
from world import TEST_COMMAND

from repos import verify
from repos.sandbox import Sandbox
from repos.test_changes import REPORT_NAME, infrastructure_changes, take_outcomes
from repos.verify import ALREADY_PASS, NO_TEST, Verification, run_command, verify_fix
from repos.workspace import commit_all, git

SANDBOX = Sandbox()  # the real one: every run here is confined as in production

BUGGY = "def mean(values):\n    return sum(values) / len(values)\n"
FIXED = "def mean(values):\n    return sum(values) / len(values) if values else 0.0\n"
EXISTING_TEST = "from stats import mean\n\n\ndef test_mean():\n    assert mean([1, 2, 3]) == 2\n"
NEW_TEST = (
    "from stats import mean\n\n\ndef test_mean_of_nothing_is_zero():\n    assert mean([]) == 0\n"
)


@pytest.fixture
async def repo(tmp_path: Path) -> tuple[Path, str]:
    """A repo whose `mean([])` raises ZeroDivisionError; returns (path, base commit)."""
    path = tmp_path / "stats"
    await git("init", "--quiet", "-b", "main", str(path), cwd=tmp_path)
    (path / "stats.py").write_text(BUGGY)
    (path / "tests").mkdir()
    (path / "tests" / "test_stats.py").write_text(EXISTING_TEST)
    (path / "conftest.py").write_text("")  # puts the repo root on sys.path
    base = await commit_all(path, "stats")
    return path, base


async def test_a_proper_fix_goes_red_then_green(repo: tuple[Path, str]) -> None:
    path, base = repo
    (path / "stats.py").write_text(FIXED)
    await commit_all(path, "fix")  # committed fix, uncommitted test: both count
    (path / "tests" / "test_empty.py").write_text(NEW_TEST)

    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)

    assert result.ok, result.reason
    assert result.test_files == ["tests/test_empty.py"]
    assert result.red is not None and result.red.exit_code != 0
    assert "ZeroDivisionError" in result.red.output
    assert result.green is not None and result.green.passed
    assert result.suite is not None and result.suite.passed
    assert "2 passed" in Verification.excerpt(result.suite)
    # The temporary worktree at the base commit is gone.
    assert len((await git("worktree", "list", cwd=path)).splitlines()) == 1


async def test_a_test_that_passes_without_the_fix_proves_nothing(repo: tuple[Path, str]) -> None:
    path, base = repo
    (path / "stats.py").write_text(FIXED)
    (path / "tests" / "test_more.py").write_text(
        "from stats import mean\n\n\ndef test_two():\n    assert mean([2, 2]) == 2\n"
    )

    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)

    assert not result.ok
    assert result.reason == ALREADY_PASS
    assert result.red is not None and result.red.exit_code == 0
    assert result.green is None


async def test_a_fix_that_breaks_the_suite_fails(repo: tuple[Path, str]) -> None:
    path, base = repo
    (path / "stats.py").write_text("def mean(values):\n    return 0\n")
    (path / "tests" / "test_empty.py").write_text(NEW_TEST)

    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)

    assert not result.ok
    assert result.reason.startswith("the test suite fail")
    assert result.red is not None and not result.red.passed
    assert result.green is not None and result.green.passed
    assert result.suite is not None and result.suite.exit_code == 1
    assert "test_mean" in Verification.excerpt(result.suite, lines=30)


async def test_a_fix_without_a_test_fails(repo: tuple[Path, str]) -> None:
    path, base = repo
    (path / "stats.py").write_text(FIXED)

    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)

    assert not result.ok
    assert result.reason == NO_TEST
    assert result.red is None


async def test_new_tests_that_fail_with_the_fix_fail(repo: tuple[Path, str]) -> None:
    path, base = repo
    (path / "tests" / "test_empty.py").write_text(NEW_TEST)  # no fix at all

    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)

    assert not result.ok
    assert result.reason == "the new tests fail (exit 1) with the fix"


async def test_new_tests_that_do_not_run_without_the_fix_prove_nothing(
    repo: tuple[Path, str],
) -> None:
    """A test that skips itself where the fix is missing is not red: it did not run."""
    path, base = repo
    (path / "median.py").write_text("def median(values):\n    return sorted(values)[1]\n")
    (path / "tests" / "test_median.py").write_text(
        "import pytest\n\nmedian = pytest.importorskip('median')\n\n\n"
        "def test_median():\n    assert median.median([3, 1, 2]) == 2\n"
    )

    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)

    assert not result.ok
    assert result.reason == "the new tests did not run without the fix (pytest exit 5)"
    assert result.red is not None and result.red.exit_code == 5
    assert result.green is None


async def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = f"fixbot-timeout-{uuid.uuid4().hex[:8]}"
    sleeper = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(30)' {marker}"
    started = time.monotonic()

    result = await run_command(f"{sleeper} & wait", tmp_path, timeout=1, sandbox=SANDBOX)

    assert result.timed_out
    assert not result.passed
    assert time.monotonic() - started < 25  # cut short: the sleeper alone takes 30 s
    assert alive_with(marker) == []


async def test_a_linked_test_file_is_copied_as_a_link_not_as_what_it_points_at(
    repo: tuple[Path, str], tmp_path: Path
) -> None:
    # Code the agent ran may leave a "test" that links to a file of Fixbot's; the red run
    # on the base commit must not get that file's content from Fixbot.
    path, base = repo
    secret = tmp_path / "fixbot.env"
    secret.write_text("GITHUB_TOKEN=ghp_from_the_host\n")
    (path / "tests" / "test_leak.py").symlink_to(secret)

    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)

    assert result.red is not None
    assert "ghp_from_the_host" not in result.red.output
    assert not result.ok


async def test_commands_get_no_secrets_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "github-token-value")
    monkeypatch.setenv("LC_ALL", "C")

    result = await run_command("env", tmp_path, timeout=30, sandbox=SANDBOX)

    assert "github-token-value" not in result.output
    assert "LC_ALL=C" in result.output
    assert "CI=true" in result.output


async def test_run_command_keeps_the_tail_of_long_output(tmp_path: Path) -> None:
    command = f"{shlex.quote(sys.executable)} -c \"print('x' * 100_000); print('the end')\""
    result = await run_command(command, tmp_path, timeout=30, sandbox=SANDBOX)

    assert result.exit_code == 0
    assert result.output.endswith("the end\n")
    assert len(result.output) <= verify.OUTPUT_LIMIT


def test_which_files_are_tests() -> None:
    paths = [
        "app/models.py",
        "test_models.py",
        "app/models_test.py",
        "tests/helpers.py",
        "tests/conftest.py",
        "tests/fixtures/data.json",
        "web/src/cart.test.ts",
        "web/src/__tests__/Cart.jsx",
        "spec/models/user_spec.rb",
        "pkg/cart/cart_test.go",
        "src/test/java/CartTest.java",
        "docs/testing.md",
        "contest.py",
    ]
    assert verify.test_files(paths) == [
        "test_models.py",
        "app/models_test.py",
        "tests/helpers.py",
        "web/src/cart.test.ts",
        "web/src/__tests__/Cart.jsx",
        "spec/models/user_spec.rb",
        "pkg/cart/cart_test.go",
        "src/test/java/CartTest.java",
    ]


async def test_verifications_of_one_repository_run_side_by_side(
    repo: tuple[Path, str], tmp_path: Path
) -> None:
    """Two tasks of one repository verified at once (execution concurrency 2)."""
    path, base = repo
    checkouts = []
    for number in (1, 2):
        checkout = tmp_path / f"task-{number}"
        await git("worktree", "add", "-b", f"fix-{number}", str(checkout), base, cwd=path)
        (checkout / "stats.py").write_text(FIXED)
        (checkout / "tests" / "test_empty.py").write_text(NEW_TEST)
        checkouts.append(checkout)

    results = await asyncio.gather(
        *(
            verify_fix(checkout, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)
            for checkout in checkouts
        )
    )

    assert [result.ok for result in results] == [True, True], [r.reason for r in results]


# Changes to how tests run, and existing tests the fix broke or hid

HIDE_FAILURES = """\
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "test_mean" in item.nodeid and "nothing" not in item.nodeid:
        report.outcome = "passed"
"""
BREAKS_MEAN = "def mean(values):\n    return sum(values) / len(values) if values else 0.0 + 1\n"
BREAKS_EXISTING = "def mean(values):\n    return 0.0 if not values else -1\n"


async def test_only_test_sections_of_shared_settings_count(tmp_path: Path) -> None:
    repo_path = tmp_path / "r"
    repo_path.mkdir()
    await git("init", "-q", "-b", "main", str(repo_path), cwd=tmp_path)
    (repo_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (repo_path / "setup.cfg").write_text("[metadata]\nname = x\n")
    base = await commit_all(repo_path, "base")
    (repo_path / "pyproject.toml").write_text('[project]\nname = "y"\n')
    (repo_path / "setup.cfg").write_text("[metadata]\nname = y\n[tool:pytest]\naddopts = -x\n")
    (repo_path / "sub").mkdir()
    (repo_path / "sub" / "conftest.py").write_text("")
    changes = await infrastructure_changes(
        repo_path, base, ["pyproject.toml", "setup.cfg", "sub/conftest.py"]
    )
    assert changes == [
        "`setup.cfg` test settings changed or added",
        "`sub/conftest.py` changed or added",
    ]

    (repo_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\naddopts = "-k x"\n')
    changes = await infrastructure_changes(repo_path, base, ["pyproject.toml"])
    assert changes == ["`pyproject.toml` test settings changed or added"]


async def test_a_conftest_hiding_a_broken_test_is_caught(repo: tuple[Path, str]) -> None:
    path, base = repo
    (path / "stats.py").write_text(BREAKS_EXISTING)
    (path / "conftest.py").write_text(HIDE_FAILURES)
    (path / "tests" / "test_empty.py").write_text(NEW_TEST)

    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)

    assert result.suite is not None and result.suite.passed  # the hidden failure
    assert not result.ok
    assert "tests/test_stats.py::test_mean" in result.reason
    assert result.guarded is not None and "test_mean" in result.guarded.output


async def test_a_deleted_or_skipped_test_is_a_change_to_approve(repo: tuple[Path, str]) -> None:
    path, base = repo
    (path / "stats.py").write_text(FIXED)
    (path / "tests" / "test_empty.py").write_text(NEW_TEST)
    skipped = EXISTING_TEST.replace(
        "def test_mean", "import pytest\n\n\n@pytest.mark.skip\ndef test_mean"
    )
    (path / "tests" / "test_stats.py").write_text(skipped)

    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)
    assert result.ok, result.reason
    assert result.test_changes == ["`tests/test_stats.py::test_mean` newly skipped"]

    (path / "tests" / "test_stats.py").unlink()
    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)
    assert result.ok, result.reason
    assert result.test_changes == ["`tests/test_stats.py` deleted"]


async def test_a_test_that_disappears_fails_verification(repo: tuple[Path, str]) -> None:
    path, base = repo
    (path / "stats.py").write_text(FIXED)
    (path / "tests" / "test_empty.py").write_text(NEW_TEST)
    (path / "tests" / "test_stats.py").write_text(EXISTING_TEST.replace("test_mean", "check_mean"))

    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)
    assert not result.ok
    assert "tests/test_stats.py::test_mean" in result.reason and result.test_changes == []


async def test_without_pytest_the_base_set_up_must_pass_as_a_whole(repo: tuple[Path, str]) -> None:
    path, base = repo
    (path / "stats.py").write_text(BREAKS_EXISTING)
    (path / "tests" / "test_empty.py").write_text(NEW_TEST)
    (path / "conftest.py").write_text(HIDE_FAILURES)
    # The same runner under a name Fixbot cannot tell is pytest (the shell removes the '').
    disguised = TEST_COMMAND.replace("-m pytest", "-m py''test")
    result = await verify_fix(path, base, disguised, timeout=120, sandbox=SANDBOX)
    assert not result.ok
    assert "base commit's test set-up" in result.reason
    assert result.test_changes == ["`conftest.py` changed or added"]


# Warm base checkouts, and the suite as the green run

LEAVES_TRACES = (
    NEW_TEST
    + """
import os
import pathlib
import shutil

if "if values" not in pathlib.Path("stats.py").read_text():  # on the base commit only
    pathlib.Path("leftover.txt").write_text("from an earlier verification")
    pathlib.Path("stats.py").write_text("def mean(values):\\n    return 0.0\\n")
    shutil.rmtree(".git", ignore_errors=True) if os.path.isdir(".git") else os.remove(".git")
    os.makedirs(".git/hooks")
"""
)


async def test_a_warm_base_checkout_carries_nothing_from_one_verification_to_the_next(
    repo: tuple[Path, str], tmp_path: Path
) -> None:
    path, base = repo
    checkouts = tmp_path / "checkouts"
    (path / "stats.py").write_text(FIXED)
    (path / "tests" / "test_empty.py").write_text(NEW_TEST)
    # A first verification makes the base commit's baseline, which later ones reuse: from
    # then on the base checkout serves only the red run, and keeps what it left.
    assert (await verify_fix(path, base, TEST_COMMAND, 120, sandbox=SANDBOX)).ok
    (path / "tests" / "test_empty.py").write_text(LEAVES_TRACES)
    first = await verify_fix(
        path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX, checkouts=checkouts
    )
    assert first.ok, first.reason
    [slot] = [entry for entry in checkouts.glob("*/*") if entry.is_dir()]
    assert (slot / "repo" / "leftover.txt").exists()  # what the red run left behind
    assert (slot / "repo" / ".git").is_dir()

    (path / "tests" / "test_empty.py").write_text(NEW_TEST)
    second = await verify_fix(
        path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX, checkouts=checkouts
    )

    # The same checkout, reset: the base commit's bug is back, the left file is gone.
    assert second.ok, second.reason
    assert second.red is not None and "ZeroDivisionError" in second.red.output
    assert [entry for entry in checkouts.glob("*/*") if entry.is_dir()] == [slot]
    assert not (slot / "repo" / "leftover.txt").exists()
    assert (slot / "repo" / "stats.py").read_text() == BUGGY
    assert (slot / "repo" / ".git").read_text() == f"gitdir: {slot / 'git'}\n"


async def test_concurrent_verifications_of_one_repository_keep_their_own_checkouts(
    repo: tuple[Path, str], tmp_path: Path
) -> None:
    path, base = repo
    checkouts = tmp_path / "checkouts"
    fixes = {"good": FIXED, "breaks": BREAKS_EXISTING}
    worktrees = {}
    for name, fix in fixes.items():
        worktree = worktrees[name] = tmp_path / name
        await git("worktree", "add", "-b", name, str(worktree), base, cwd=path)
        (worktree / "stats.py").write_text(fix)
        (worktree / "tests" / "test_empty.py").write_text(NEW_TEST)

    for _ in range(2):  # cold, then warm
        good, breaks = await asyncio.gather(
            *(
                verify_fix(
                    worktree, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX, checkouts=checkouts
                )
                for worktree in worktrees.values()
            )
        )
        assert good.ok, good.reason
        assert good.red is not None and "ZeroDivisionError" in good.red.output
        assert not breaks.ok
        assert breaks.reason.startswith("the test suite fail")
        assert breaks.red is not None and "ZeroDivisionError" in breaks.red.output
    slots = sorted(entry.name for entry in checkouts.glob("*/*") if entry.is_dir())
    assert slots == ["0", "1"]


async def test_a_suite_that_reports_the_new_tests_passing_is_their_green_run(
    repo: tuple[Path, str],
) -> None:
    path, base = repo
    (path / "stats.py").write_text(FIXED)
    (path / "tests" / "test_empty.py").write_text(NEW_TEST)
    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)
    assert result.ok, result.reason
    assert result.green is result.suite

    # With the test set-up changed there is no per-test report: the new tests run alone.
    (path / "conftest.py").write_text("# changed\n")
    result = await verify_fix(path, base, TEST_COMMAND, timeout=120, sandbox=SANDBOX)
    assert result.ok, result.reason
    assert result.green is not None and result.green is not result.suite
    assert "1 passed" in Verification.excerpt(result.green)


def test_a_report_that_is_a_link_is_not_read(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.xml"
    elsewhere.write_text('<testsuite><testcase file="t.py" name="test_x"/></testsuite>')
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / REPORT_NAME).symlink_to(elsewhere)
    assert take_outcomes(checkout) is None
    assert not (checkout / REPORT_NAME).is_symlink()  # taken away all the same

    (checkout / REPORT_NAME).write_bytes(elsewhere.read_bytes())
    assert take_outcomes(checkout) == {"t.py::test_x": "passed"}
