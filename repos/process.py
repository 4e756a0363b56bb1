"""The one way Fixbot runs a program: spawn, time limit, kill the process group, reap.

Every program Fixbot starts itself (git, test and setup commands, `rm -rf`, the sandbox
probe, the doctor's checks) goes through `run`: an asyncio subprocess in its own process
group, with no input, bounded by a timeout, and always reaped. Whatever it leaves running
in its group is killed when it ends, so nothing outlives the call, and neither a timeout
nor a cancellation leaves a process behind. The Claude Code CLI is started by
claude-agent-sdk; `kill_child` ends it when the SDK's own shutdown was cut short.

Also here: the one allowlist of inherited variables a program Fixbot did not write may
see (test runs, the agents' CLI). Fixbot's own variables (tokens, the database URL) never
reach them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL for a group that overran its time
DRAIN_TIMEOUT_S = 5.0  # how long to wait for output after the program ended

# Inherited variables that programs Fixbot did not write may see: the locale (and every
# LC_*), the shell, proxies and certificates.
PASSED_THROUGH = frozenset(
    {
        "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "USER", "LOGNAME",
        "SHELL", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
        "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS",
    }
)  # fmt: skip
_PASSED_THROUGH_PREFIXES = ("LC_",)


def passes_through(name: str) -> bool:
    """Whether the inherited variable `name` may reach a program Fixbot did not write."""
    return name in PASSED_THROUGH or name.startswith(_PASSED_THROUGH_PREFIXES)


def inherited_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allowlisted part of `environ` (Fixbot's own environment by default), with a
    PATH even when none was set."""
    environ = os.environ if environ is None else environ
    env = {name: value for name, value in environ.items() if passes_through(name)}
    env.setdefault("PATH", os.defpath)
    return env


@dataclass(frozen=True)
class Finished:
    """How a program ended, and what it wrote."""

    exit_code: int  # -N: killed by signal N
    stdout: str  # with stderr in it when run with `merge_stderr`
    stderr: str
    duration_s: float
    timed_out: bool = False


async def run(
    argv: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109 (the bound is part of every call's contract)
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    merge_stderr: bool = False,
    keep: int | None = None,
) -> Finished:
    """Run `argv` in its own process group and wait for it at most `timeout` seconds.

    On timeout the group gets SIGTERM, then SIGKILL, and the result says `timed_out`.
    `keep` bounds the output kept to its last `keep` bytes (where programs summarise).
    `env` replaces the inherited environment when given. Raises OSError when `argv[0]`
    cannot be started; cancelling the call kills the group and reaps it.
    """
    started = time.monotonic()
    starting = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    )
    try:
        # Shielded: cancelled while its pipes were still being connected, asyncio would kill
        # the program alone, not its group, then wait for pipes its children still hold.
        process = await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(OSError):
            await _stop_group(await starting)
        raise
    stdout, stderr = bytearray(), bytearray()
    assert process.stdout is not None
    readers = [asyncio.create_task(_read(process.stdout, stdout, keep))]
    if process.stderr is not None:
        readers.append(asyncio.create_task(_read(process.stderr, stderr, keep)))
    timed_out = False
    try:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that
        # comes as the program ends, and the step would go on after a stop or a cancel.
        async with asyncio.timeout(timeout):
            await process.wait()
    except TimeoutError:
        timed_out = True
        await _stop_group(process)
    except BaseException:
        for reader in readers:
            reader.cancel()
        await _stop_group(process)
        raise
    # Children the program left behind would hold the pipes open: they go too.
    _signal_group(process.pid, signal.SIGKILL)
    await asyncio.wait(readers, timeout=DRAIN_TIMEOUT_S)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    assert process.returncode is not None
    return Finished(
        exit_code=process.returncode,
        stdout=_tail(stdout, keep),
        stderr=_tail(stderr, keep),
        duration_s=round(time.monotonic() - started, 3),
        timed_out=timed_out,
    )


def kill_child(pid: int) -> None:
    """SIGKILL `pid` if it is still a child of this process: a pid that was reaped and
    reused belongs to someone else."""
    if _parent_of(pid) == os.getpid():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


async def _read(stream: asyncio.StreamReader, output: bytearray, keep: int | None) -> None:
    while chunk := await stream.read(65536):
        output += chunk
        if keep is not None and len(output) > 2 * keep:
            del output[:-keep]


def _tail(output: bytearray, keep: int | None) -> str:
    return bytes(output if keep is None else output[-keep:]).decode(errors="replace")


async def _stop_group(process: asyncio.subprocess.Process) -> None:
    _signal_group(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), KILL_GRACE_S)
    except TimeoutError:
        _signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), KILL_GRACE_S)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]) if len(fields) > 1 else None
