"""The one place Fixbot makes OS sandboxes: bubblewrap around everything that runs repo code.

Every Claude Code process of an agent step (and so every command its tools run) and every
test or lint command Fixbot runs itself starts inside `bwrap` with:

- its own PID namespace and a fresh /proc: no process outside is visible, so no other
  process's environment (`/proc/<pid>/environ`) can be read;
- its own network namespace with only loopback: nothing is reachable except the endpoints
  a caller names (the Anthropic API for the CLI, a repository's `network_allow` hosts for
  its test runs). socat inside listens on loopback and carries each connection over a Unix
  socket to Fixbot, which passes it on: to a loopback address as it is (the scripted model
  in tests), to a host by name as an HTTP CONNECT proxy (HTTPS_PROXY inside) that allows
  only the named hosts and ports;
- a read-only root holding only the system (/usr, a few files of /etc), the Python that
  Fixbot runs (its prefix and base prefix: the test command's interpreter and the bundled
  CLI live there), the git directories of the one repository at hand, a private /tmp, and
  writable only what the caller names (the task's worktree, the CLI's HOME). Fixbot's own
  checkout, `.env`, database, other repositories' mirrors and the host's home are absent.

`sandbox: off` in fixbot.yml runs commands as they are, and every step says so loudly in
the log. When no sandbox can be made (bwrap missing, user namespaces refused) `problem`
says why and nothing that needs one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from repos import process
from repos.errors import StepFailed

log = logging.getLogger("fixbot.sandbox")

SandboxMode = Literal["required", "off"]

# The system a command needs, read-only: programs, libraries, certificates, users.
_SYSTEM = ("/usr", "/opt")
_MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gitconfig",
    "group",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "passwd",
    "pki",
    "python3",
    "ssl",
    "timezone",
)
_PROBE_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 30.0
PROXY_PORT = 3128  # inside: where HTTPS_PROXY points, for hosts reached by name

NO_SANDBOX_HELP = (
    "install bubblewrap and socat (apt-get install bubblewrap socat) and allow user "
    "namespaces (in a container: see docs/sandbox.md), or set `sandbox: off` in "
    "fixbot.yml to run agents unconfined"
)


class SandboxUnavailable(StepFailed):
    """No sandbox can be made here, and fixbot.yml requires one."""


@dataclass(frozen=True)
class Endpoint:
    """A TCP endpoint outside that a sandboxed process may reach, by the same name and port."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int = 443) -> Endpoint:
        """`host`, `host:port` or a URL (`https://api.anthropic.com`)."""
        parts = urlsplit(text if "://" in text else f"//{text}")
        if not parts.hostname:
            raise ValueError(f"{text!r} names no host")
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, default_port)
        return cls(parts.hostname, port)

    @property
    def is_address(self) -> bool:
        """Whether `host` is an IPv4 loopback address (the scripted model in tests): the
        sandbox listens on it as it is, so a client needs no proxy to get there."""
        return self.host.startswith("127.") and self.host.replace(".", "").isdigit()


@dataclass(frozen=True)
class Sandbox:
    """How Fixbot confines what it runs: `required` (bubblewrap) or `off`."""

    mode: SandboxMode = "required"
    bwrap: str = "bwrap"
    socat: str = "socat"

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    async def problem(self) -> str | None:
        """Why no sandbox can be made here, or None: a real one is started and must work."""
        bwrap, socat = shutil.which(self.bwrap), shutil.which(self.socat)
        if bwrap is None:
            return f"bubblewrap (`{self.bwrap}`) is not installed"
        if socat is None:
            return f"socat (`{self.socat}`) is not installed"
        argv = [bwrap, *_namespaces(), *_system_binds(), "--remount-ro", "/", "--", "true"]
        probe = await process.run(argv, timeout=_PROBE_TIMEOUT_S)
        if probe.timed_out:
            return f"bubblewrap did not start a sandbox within {_PROBE_TIMEOUT_S:g} s"
        if probe.exit_code != 0:
            said = probe.stderr.strip() or f"exit {probe.exit_code}"
            return f"bubblewrap cannot make a sandbox here: {said}"
        return None

    async def require(self) -> None:
        """Raise SandboxUnavailable, with what to do, when a required sandbox cannot be made."""
        if not self.enabled:
            return
        problem = await self.problem()
        if problem is not None:
            raise SandboxUnavailable(
                f"No agent runs without its sandbox, and {problem}: {NO_SANDBOX_HELP}."
            )

    @contextlib.asynccontextmanager
    async def confine(
        self,
        *,
        writable: Sequence[Path],
        readable: Sequence[Path] = (),
        reach: Sequence[Endpoint] = (),
        setenv: dict[str, str] | None = None,
        network: bool = False,
    ) -> AsyncIterator[Confinement]:
        """A sandbox layout, with the bridges to `reach` running until the block ends.

        `writable` and `readable` are bound at their own paths (git directories of any
        repository among them come along read-only); `setenv` is laid over the environment
        inside. `network` keeps the host's network (a repository's setup installs
        packages). With the sandbox off, the confinement runs commands as they are.
        """
        if not self.enabled:
            yield Confinement([])
            return
        await self.require()
        bwrap, socat = shutil.which(self.bwrap), shutil.which(self.socat)
        assert bwrap is not None and socat is not None
        with tempfile.TemporaryDirectory(prefix="fixbot-sandbox-") as holder:
            bridges = Path(holder)
            async with contextlib.AsyncExitStack() as stack:
                listens: list[tuple[str, int, Path]] = []
                for index, endpoint in enumerate(e for e in reach if e.is_address):
                    socket_path = bridges / f"{index}.sock"
                    await stack.enter_async_context(_host_side(socket_path, forward_to=endpoint))
                    listens.append((endpoint.host, endpoint.port, socket_path))
                named = [endpoint for endpoint in reach if not endpoint.is_address]
                variables = {"TMPDIR": "/tmp", **(setenv or {})}
                if named:
                    socket_path = bridges / "proxy.sock"
                    await stack.enter_async_context(_host_side(socket_path, allowed=named))
                    listens.append(("127.0.0.1", PROXY_PORT, socket_path))
                    proxy = f"http://127.0.0.1:{PROXY_PORT}"
                    for name in ("HTTPS_PROXY", "HTTP_PROXY"):
                        variables[name] = variables[name.lower()] = proxy
                    variables["NO_PROXY"] = variables["no_proxy"] = "127.0.0.1"  # direct bridges
                argv = [
                    bwrap,
                    *_namespaces(),
                    *(["--share-net"] if network else []),
                    *_system_binds(),
                    *_bind_all("--ro-bind", _python_dirs()),
                    *_bind_all("--ro-bind", [*readable, *_git_dirs(writable), bridges]),
                    *_bind_all("--bind", writable),
                ]
                for name, value in variables.items():
                    argv += ["--setenv", name, value]
                argv += ["--remount-ro", "/", "--"]
                if listens:
                    argv += ["/bin/sh", "-c", _bridge_script(socat, listens), "sandbox"]
                yield Confinement(argv, bridges)


@dataclass(frozen=True)
class Confinement:
    """How to start a command in one sandbox: `argv(command)` is what to execute."""

    prefix: list[str]
    holder: Path | None = None  # a private folder on the host for this sandbox's files

    def argv(self, command: Sequence[str]) -> list[str]:
        return [*self.prefix, *command]

    def launcher(self, command: Sequence[str], *, bind_variable: str) -> Path:
        """An executable script that runs `command "$@"` in this sandbox, also binding the
        folder named by `$bind_variable` writable when set (the SDK chooses it late: a
        resumed session's CLAUDE_CONFIG_DIR)."""
        assert self.holder is not None, "a sandbox that is off has no launcher"
        head, tail = _split_at_remount(self.prefix)
        script = self.holder / "launch"
        script.write_text(
            "#!/bin/sh\n"
            f'set -- {shlex.join(command)} "$@"\n'
            f'set -- {shlex.join(tail)} "$@"\n'
            f'if [ -n "${{{bind_variable}:-}}" ]; then\n'
            f'  set -- --bind "${bind_variable}" "${bind_variable}" "$@"\n'
            "fi\n"
            f'exec {shlex.join(head)} "$@"\n'
        )
        script.chmod(0o700)
        return script


def _split_at_remount(prefix: list[str]) -> tuple[list[str], list[str]]:
    """The bwrap arguments before `--remount-ro /` and from it on: late binds go between."""
    index = prefix.index("--remount-ro")
    return prefix[:index], prefix[index:]


def _namespaces() -> list[str]:
    return [
        "--unshare-all",  # user (when allowed), pid, net, ipc, uts, cgroup
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into a terminal outside
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
    ]


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in _SYSTEM:
        if Path(path).is_dir():
            args += ["--ro-bind", path, path]
    for top in (Path("/") / name for name in _MERGED_USR):
        if top.is_symlink():
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    for entry in (Path("/etc") / name for name in _ETC):
        if entry.exists():
            args += ["--ro-bind", str(entry), str(entry)]
    return args


def _python_dirs() -> list[Path]:
    """The Python Fixbot runs: tests run `python -m pytest` with it, and the bundled CLI
    lives in its site-packages. Only the installations, not the folders around them."""
    return [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]


def _git_dirs(worktrees: Sequence[Path]) -> list[Path]:
    """The git directories a checkout reads from: a worktree's common directory (its
    mirror) and the object stores its alternates borrow. Read-only inside: hooks and config
    cannot be changed from there."""
    found: list[Path] = []
    for worktree in worktrees:
        dot_git = worktree / ".git"
        if dot_git.is_file():
            text = dot_git.read_text().strip()
            if not text.startswith("gitdir:"):
                continue
            admin = (worktree / text.removeprefix("gitdir:").strip()).resolve()
            commondir = admin / "commondir"
            common = (
                (admin / commondir.read_text().strip()).resolve() if commondir.is_file() else admin
            )
            found.append(common)
            objects = common / "objects"
        elif dot_git.is_dir():
            objects = dot_git / "objects"
        else:
            continue
        alternates = objects / "info" / "alternates"
        if alternates.is_file():
            for line in alternates.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    found.append((objects / line).resolve())
    return found


def _bind_all(flag: str, paths: Sequence[Path]) -> list[str]:
    """Bind each existing path at its real place, and also where it was named when that
    goes through a link (a worktree's cwd and its .git file may use either)."""
    args: list[str] = []
    seen: set[Path] = set()
    for path in paths:
        resolved = path.resolve()
        if not resolved.exists():
            continue
        for place in (resolved, path.absolute()):
            if place not in seen:
                seen.add(place)
                args += [flag, str(resolved), str(place)]
    return args


def _bridge_script(socat: str, listens: list[tuple[str, int, Path]]) -> str:
    """Inside: a socat listener per bridge, each ready before the command starts."""
    # Their stdio goes nowhere: the command's pipes (the CLI's protocol stream) are its own
    # and close when it ends.
    lines = [
        f"{shlex.quote(socat)} TCP-LISTEN:{port},bind={address},reuseaddr,fork "
        f"UNIX-CONNECT:{socket_path} </dev/null >/dev/null 2>&1 &"
        for address, port, socket_path in listens
    ]
    ports = " ".join(f"{port:04X}" for _, port, _ in listens)
    # Wait until every listener is up (state 0A in /proc/net/tcp), at most about 5 s.
    lines.append(
        f"for port in {ports}; do n=0; "
        'while ! grep -q ":$port 00000000:0000 0A" /proc/net/tcp && [ $n -lt 250 ]; '
        "do n=$((n+1)); sleep 0.02; done; done"
    )
    lines.append('exec "$@"')
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def _host_side(
    socket_path: Path, *, forward_to: Endpoint | None = None, allowed: Sequence[Endpoint] = ()
) -> AsyncIterator[None]:
    """Outside, in Fixbot's event loop: every connection to `socket_path` goes on to
    `forward_to`, or (an HTTP CONNECT proxy) to the `allowed` endpoint it asks for."""
    # Each running connection's task and the streams it holds: closing the streams ends
    # it (cancelling it instead makes asyncio log the cancellation as an error).
    connections: dict[asyncio.Task[None], list[asyncio.StreamWriter]] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        streams = connections[task] = [writer]
        try:
            target = forward_to or await _proxy_request(reader, writer, allowed)
            if target is None:
                return
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port), _CONNECT_TIMEOUT_S
            )
            streams.append(upstream_writer)
            if forward_to is None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            pass  # the sandboxed client sees its connection end
        finally:
            for stream in streams:
                stream.close()
            connections.pop(task, None)

    server = await asyncio.start_unix_server(serve, path=str(socket_path))
    try:
        yield
    finally:
        server.close()
        for stream in [stream for streams in connections.values() for stream in streams]:
            stream.close()
        if connections:
            await asyncio.wait(list(connections), timeout=_CONNECT_TIMEOUT_S)


async def _proxy_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, allowed: Sequence[Endpoint]
) -> Endpoint | None:
    """Read `CONNECT host:port`; the endpoint when it is allowed, else answer 403."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _CONNECT_TIMEOUT_S)
    method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    host, _, port = target.rpartition(":")
    asked = Endpoint(host.strip("[]").lower(), int(port)) if port.isdigit() else None
    if method.upper() == "CONNECT" and asked in allowed:
        return asked
    writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    log.warning("sandbox: refused a connection to %s", target[:200])
    return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
