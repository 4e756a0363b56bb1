"""Start Fixbot's entry points (`python app.py`, the `fixbot` script) as new processes
forked from one that has imported them already.

A fresh interpreter spends ~2 CPU-seconds importing Fixbot (Bolt, SQLAlchemy, the agent
SDK, …) before it does anything; the end-to-end tests start the app a few hundred times.
Each launch here is still its own process in its own session, with its own environment,
working directory, output files and exit code, running the same `main` as the script;
only the imports are done once, in the launcher (this file run as a script). A test of
the script's own start (tests/test_app.py) and the containment test (which reads the
processes' /proc/<pid>/environ) still run `python app.py` itself.

    process = launch("app", cwd=root, env=env, stdout=log)   # Popen-like: poll, wait, …
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAZY_IMPORTS = (
    "httpcore",
    "h11",
    "anyio._backends._asyncio",
    "anyio._core._subprocesses",
    "aiosqlite",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "slack_bolt.listener_matcher.async_builtins",
)


class Launched:
    """A launched process: the parts of `subprocess.Popen` the tests use."""

    def __init__(self, launcher: Launcher, pid: int) -> None:
        self.launcher = launcher
        self.pid = pid

    @property
    def returncode(self) -> int | None:
        return self.launcher.exits.get(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self.launcher.changed:
            if not self.launcher.changed.wait_for(lambda: self.pid in self.launcher.exits, timeout):
                raise subprocess.TimeoutExpired(f"launched {self.pid}", timeout or 0)
            return self.launcher.exits[self.pid]

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # its pid may be another process's once it is reaped
            with contextlib.suppress(ProcessLookupError):  # ended, not yet reported
                os.kill(self.pid, sig)


class Launcher:
    """The launcher process and what it reports: each launch's pid, each exit's code."""

    def __init__(self) -> None:
        environment = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, __file__],
            cwd=ROOT,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.changed = threading.Condition()
        self.pids: dict[int, int] = {}  # launch number → pid
        self.exits: dict[int, int] = {}  # pid → exit code (-signal when killed by one)
        self.launches = 0
        threading.Thread(target=self._read, daemon=True).start()

    def launch(self, request: dict[str, Any]) -> Launched:
        with self.changed:
            self.launches += 1
            number = self.launches
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps({"number": number, **request}).encode() + b"\n")
            self.process.stdin.flush()
            if not self.changed.wait_for(lambda: number in self.pids, 30):
                raise RuntimeError("the launcher did not answer")
            return Launched(self, self.pids[number])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            report = json.loads(line)
            with self.changed:
                if "code" in report:
                    self.exits[report["pid"]] = report["code"]
                else:
                    self.pids[report["number"]] = report["pid"]
                self.changed.notify_all()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(10)


_launcher: Launcher | None = None


def launch(
    entry: str,
    *args: str,
    cwd: Path,
    env: dict[str, str],
    stdout: Path,
    stderr: Path | None = None,
) -> Launched:
    """Start `entry` ("app": `python app.py`; "fixbot": the `fixbot` script with `args`) in a
    new session, its output appended to `stdout` (and `stderr`, or the same file)."""
    global _launcher
    if _launcher is None:
        _launcher = Launcher()
        atexit.register(_launcher.close)
    return _launcher.launch(
        {
            "entry": entry,
            "args": list(args),
            "cwd": str(cwd),
            "env": env,
            "stdout": str(stdout),
            "stderr": str(stderr or stdout),
        }
    )


# The launcher process itself: import once, then fork a child per request.


def _serve() -> None:
    sys.path[0] = str(ROOT)  # as `python app.py` in the checkout has it
    import app  # noqa: F401  (the imports are the point)
    import bot.cli  # noqa: F401
    from bot.integrations import _tls_context

    # What a start imports on first use: httpx's transport, anyio's, the drivers, Bolt's.
    for name in LAZY_IMPORTS:
        importlib.import_module(name)

    _tls_context()  # the vendor clients' one TLS context, made once and inherited

    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    pending = b""
    while True:
        readable, _, _ = select.select([0, wake_read], [], [])
        if wake_read in readable:
            os.read(wake_read, 1024)
            _reap()
        if 0 in readable:
            chunk = os.read(0, 1 << 20)
            if not chunk:
                return  # the tests are over; launched processes are theirs to stop
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    os.close(wake_read)
                    os.close(wake_write)
                    _child(request)
                _report({"number": request["number"], "pid": pid})


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _report({"pid": pid, "code": os.waitstatus_to_exitcode(status)})


def _report(report: dict[str, Any]) -> None:
    os.write(1, json.dumps(report).encode() + b"\n")


def _child(request: dict[str, Any]) -> None:
    """Become `python app.py` (or `fixbot ARGS`) as the request describes; never returns."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import random

        random.seed()  # not the launcher's sequence
        signal.signal(signal.SIGUSR1, _print_tasks)
        code = _run(request["entry"], request["args"])
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        import logging

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _print_tasks(*_: object) -> None:
    """SIGUSR1: print every asyncio task's stack (World.stop_app asks before it kills one
    that does not stop)."""
    import asyncio

    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no loop running
        tasks = set()
    print(f"--- {len(tasks)} asyncio tasks at SIGUSR1 ---", file=sys.stderr)
    for task in tasks:
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


def _run(entry: str, args: list[str]) -> int:
    if entry == "app":
        import app

        sys.argv = [str(ROOT / "app.py")]
        return app.main()
    from bot import cli

    sys.argv = ["fixbot", *args]
    return cli.main(args)


if __name__ == "__main__":
    _serve()
