"""A repository's setup_command: run once per change of what it depends on, then cached."""

from __future__ import annotations

from pathlib import Path

import pytest
from world import git

from repos.config import RepoConfig
from repos.environment import SetupFailed, prepare_environment
from repos.sandbox import Sandbox


def repo(setup: str | None, **values: object) -> RepoConfig:
    return RepoConfig(name="acme/shop", clone_url="file:///dev/null", setup_command=setup, **values)  # type: ignore[arg-type]


def checkout_with(root: Path, files: dict[str, str]) -> Path:
    """A git checkout holding `files` (the setup runs in a clone of it)."""
    checkout = root / "checkout"
    checkout.mkdir()
    for name, text in files.items():
        (checkout / name).write_text(text)
    git("init", "-q", "-b", "main", cwd=checkout)
    git("add", "-A", cwd=checkout)
    git("commit", "-q", "--allow-empty", "-m", "files", cwd=checkout)
    return checkout


SANDBOX = Sandbox()  # the setup runs repository code: in the sandbox, as in production

# A setup that leaves a tool in its environment and notes that it ran there (the sandbox
# lets it write only its scratch clone and its environment).
COUNTING = (
    'mkdir -p "$FIXBOT_ENV/bin" && printf "#!/bin/sh\\necho tool\\n" > "$FIXBOT_ENV/bin/tool"'
    ' && chmod +x "$FIXBOT_ENV/bin/tool" && echo run >> "$FIXBOT_ENV/runs"'
)


async def test_setup_runs_once_per_change_of_its_files(tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    checkout = checkout_with(tmp_path, {"requirements.txt": "requests==2.32.3\n"})
    config = repo(COUNTING + " && touch built.egg-info")

    first = await prepare_environment(config, checkout, envs, within_s=60, sandbox=SANDBOX)
    again = await prepare_environment(config, checkout, envs, within_s=60, sandbox=SANDBOX)
    assert first is not None and again is not None
    assert first.path == again.path and first.path.parent == envs / "acme__shop"
    assert first.setup_s > 0 and again.setup_s == 0
    assert (first.path / "runs").read_text() == "run\n"
    assert not (checkout / "built.egg-info").exists()  # it ran in a scratch clone
    assert first.variables["PATH"].startswith(f"{first.path / 'bin'}:")
    assert first.variables["VIRTUAL_ENV"] == str(first.path)

    (checkout / "requirements.txt").write_text("requests==2.32.4\n")
    changed = await prepare_environment(config, checkout, envs, within_s=60, sandbox=SANDBOX)
    assert changed is not None and changed.path != first.path
    assert (changed.path / "runs").read_text() == "run\n"

    # Only the files named in setup_files count when it is given.
    only_lock = repo(COUNTING, setup_files=["poetry.lock"])
    named = await prepare_environment(only_lock, checkout, envs, within_s=60, sandbox=SANDBOX)
    (checkout / "requirements.txt").write_text("anything\n")
    unchanged = await prepare_environment(only_lock, checkout, envs, within_s=60, sandbox=SANDBOX)
    assert named is not None and unchanged is not None
    assert unchanged.path == named.path and unchanged.setup_s == 0


async def test_a_failed_setup_says_why_and_caches_nothing(tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    broken = repo('echo "no such requirement: flask==99" && exit 3')

    with pytest.raises(SetupFailed, match="exit 3") as failed:
        await prepare_environment(
            broken, checkout_with(tmp_path, {}), envs, within_s=60, sandbox=SANDBOX
        )

    assert "no such requirement" in (failed.value.output or "")
    assert [p for p in (envs / "acme__shop").iterdir() if p.is_dir()] == []


async def test_no_setup_command_no_environment(tmp_path: Path) -> None:
    assert (
        await prepare_environment(
            repo(None), tmp_path, tmp_path / "envs", within_s=60, sandbox=SANDBOX
        )
        is None
    )
