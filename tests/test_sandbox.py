"""The sandbox itself, in process: real bubblewrap around real commands.

What a command inside may and may not do, stated as facts a test can check from outside:
it cannot see another process's environment, reach a server on the host's loopback, or
write anywhere but the folders it was given; it can reach an endpoint it was bridged to.
Never skipped: where no sandbox can be made these fail, as Fixbot refuses agents there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers import Listener

from repos.config import RepoConfig
from repos.sandbox import Endpoint, Sandbox, SandboxUnavailable
from repos.verify import CommandResult, run_command
from repos.workspace import Workspaces, git

SANDBOX = Sandbox()
PYTHON = sys.executable


async def inside(command: str, cwd: Path, *, reach: tuple[Endpoint, ...] = ()) -> CommandResult:
    return await run_command(command, cwd, timeout=60, sandbox=SANDBOX, reach=reach)


async def test_a_sandbox_can_be_made_here() -> None:
    assert await SANDBOX.problem() is None


async def test_a_command_inside_sees_no_process_outside(tmp_path: Path) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    outside = subprocess.Popen(
        [PYTHON, "-c", "import time; time.sleep(60)"], env={"FIXBOT_CANARY": canary}
    )
    try:
        result = await inside(
            f"cat /proc/{outside.pid}/environ /proc/{os.getpid()}/environ; "
            "cat /proc/[0-9]*/environ; ls /proc",
            tmp_path,
        )
    finally:
        outside.kill()
        outside.wait()
    assert canary not in result.output
    pids = [word for word in result.output.split() if word.isdigit()]
    assert pids and all(int(pid) < 10 for pid in pids), result.output  # its own few only


async def test_a_command_inside_reaches_no_server_on_the_hosts_loopback(
    tmp_path: Path, listener: Listener
) -> None:
    connect = (
        f"{PYTHON} -c \"import socket; socket.create_connection(('127.0.0.1', {listener.port}),"
        " timeout=3).sendall(b'leak')\"; "
        f"curl -s -m 3 -d leak http://127.0.0.1:{listener.port}/; echo curl-exit=$?"
    )
    result = await inside(connect, tmp_path)
    assert "ConnectionRefusedError" in result.output
    assert "curl-exit=0" not in result.output
    assert listener.received == []


async def test_an_endpoint_given_by_address_is_reachable_as_it_is(
    tmp_path: Path, listener: Listener
) -> None:
    # How the CLI reaches the scripted model (ANTHROPIC_BASE_URL=http://127.0.0.1:PORT).
    result = await inside(
        f"curl -s -m 5 -d from-inside http://127.0.0.1:{listener.port}/",
        tmp_path,
        reach=(Endpoint("127.0.0.1", listener.port),),
    )
    assert result.output == "ok", result.output
    assert listener.received and b"from-inside" in listener.received[0]


async def test_hosts_given_by_name_are_reached_through_a_proxy_that_allows_only_them(
    tmp_path: Path, listener: Listener
) -> None:
    # How the CLI reaches https://api.anthropic.com and test runs their `network_allow`
    # hosts: HTTPS_PROXY inside, an HTTP CONNECT proxy outside that allows only those.
    allowed = f"http://localhost:{listener.port}/"
    other = f"http://localhost:{listener.port + 1}/"
    result = await inside(
        f"curl -s -m 5 -p -d through-proxy {allowed}; echo; "
        f"curl -s -m 5 -p -o /dev/null -w 'other:%{{http_connect}}' {other}; echo; "
        f"curl -s -m 3 --noproxy '*' {allowed}; echo direct-exit=$?",
        tmp_path,
        reach=(Endpoint.parse(f"localhost:{listener.port}"),),
    )
    lines = result.output.splitlines()
    assert lines[0] == "ok", result.output
    assert lines[1] == "other:403", result.output
    assert "direct-exit=0" not in result.output
    assert len(listener.received) == 1 and b"through-proxy" in listener.received[0]


async def test_only_the_given_folder_is_writable(tmp_path: Path) -> None:
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    beside = tmp_path / "beside.txt"
    host_tmp = Path("/tmp") / f"fixbot-sandbox-test-{uuid.uuid4().hex}"
    result = await inside(
        f"echo mine > inside.txt; echo x > {beside}; echo x > {host_tmp}; "
        f"echo x > {Path.home() / 'fixbot-test'}; echo x > {Path(PYTHON).parent / 'x'}; "
        f"ls {Path(__file__).parent}; ls {Path.home()}",
        worktree,
    )
    assert (worktree / "inside.txt").read_text() == "mine\n"
    assert not beside.exists() and not host_tmp.exists()
    assert not (Path.home() / "fixbot-test").exists()
    assert not (Path(PYTHON).parent / "x").exists()  # Fixbot's Python is there, read-only
    assert "test_sandbox.py" not in result.output  # Fixbot's own files are not there at all


async def test_git_works_in_a_task_worktree_and_its_mirror_stays_read_only(
    tmp_path: Path,
) -> None:
    origin = tmp_path / "origin"
    await git("init", "--quiet", "-b", "main", str(origin), cwd=tmp_path)
    (origin / "a.py").write_text("a = 1\n")
    await git("add", "-A", cwd=origin)
    await git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a", cwd=origin)
    workspaces = Workspaces(tmp_path / "work")
    repo = RepoConfig(name="acme/a", clone_url=origin.as_uri())
    worktree = await workspaces.prepare(repo, "fixbot/a")
    mirror = workspaces.mirror_path(repo)
    other = workspaces.mirrors / "acme__other.git"
    other.mkdir(parents=True)

    (worktree.path / "a.py").write_text("a = 2\n")
    hook = mirror / "hooks" / "post-checkout"
    result = await inside(
        f"git status --short; git diff --stat; echo x > {hook}; echo y > {mirror / 'config'};"
        f" ls {other}; echo other-exit=$?",
        worktree.path,
    )

    assert " M a.py" in result.output and "1 file changed" in result.output
    assert not hook.exists()
    assert "y" not in (mirror / "config").read_text().split()
    assert "other-exit=0" not in result.output  # other repositories' mirrors are not there


async def test_without_bubblewrap_nothing_runs_and_the_reason_says_what_to_do(
    tmp_path: Path,
) -> None:
    missing = Sandbox(bwrap=str(tmp_path / "no-bwrap"))
    assert "is not installed" in (await missing.problem() or "")
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        await run_command("echo ran > ran.txt", tmp_path, timeout=10, sandbox=missing)
    assert not (tmp_path / "ran.txt").exists()


async def test_sandbox_off_runs_commands_as_they_are(tmp_path: Path) -> None:
    off = Sandbox(mode="off", bwrap=str(tmp_path / "no-bwrap"))
    result = await run_command("echo ran > ../ran.txt", tmp_path, timeout=10, sandbox=off)
    assert result.passed and (tmp_path.parent / "ran.txt").exists()
