"""Starting and stopping the real app: settings errors, health, clean shutdown.

One test runs `python app.py` itself, for the script's own start; the others start it
through tests/launcher.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from helpers import free_port
from launcher import launch
from world import ROOT, World


def run_app(
    env: dict[str, str], cwd: Path, *, script: bool = False
) -> subprocess.CompletedProcess[str]:
    """`python app.py` in `cwd`: the script itself when `script`, else through
    tests/launcher.py (the same `main`, its imports done already)."""
    if script:
        return subprocess.run(
            [sys.executable, str(ROOT / "app.py")],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    out, err = cwd / "app.out", cwd / "app.err"
    code = launch("app", cwd=cwd, env=env, stdout=out, stderr=err).wait(60)
    return subprocess.CompletedProcess("app.py", code, out.read_text(), err.read_text())


def test_missing_tokens_name_the_variable_and_where_it_comes_from(tmp_path: Path) -> None:
    done = run_app({"PATH": os.environ["PATH"]}, tmp_path, script=True)
    assert done.returncode == 2
    assert "SLACK_BOT_TOKEN is not set" in done.stderr
    assert "OAuth & Permissions" in done.stderr
    assert "SLACK_APP_TOKEN is not set" in done.stderr
    assert "Traceback" not in done.stderr


def test_malformed_settings_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "fixbot.yml").write_text("limits:\n  task_budget_usd: lots\n")
    env = {
        "PATH": os.environ["PATH"],
        "SLACK_BOT_TOKEN": "xoxb-1",
        "SLACK_APP_TOKEN": "xapp-1",
        "FIXBOT_HTTP_PORT": "not-a-port",
    }
    done = run_app(env, tmp_path)
    assert done.returncode == 2
    assert "FIXBOT_HTTP_PORT" in done.stderr
    assert "limits.task_budget_usd" in done.stderr
    assert "Traceback" not in done.stderr
    (tmp_path / "fixbot.yml").write_text("repos: [\n")
    done = run_app({**env, "FIXBOT_HTTP_PORT": "0"}, tmp_path)
    assert "not valid YAML" in done.stderr and "Traceback" not in done.stderr


def test_a_fixbot_yml_made_a_directory_by_a_bind_mount_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "fixbot.yml").mkdir()  # what Docker makes for a missing bind-mounted file
    env = {"PATH": os.environ["PATH"], "SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1"}
    done = run_app({**env, "FIXBOT_CONFIG": str(tmp_path / "fixbot.yml")}, tmp_path)
    assert done.returncode == 2
    assert "is a directory" in done.stderr and "fixbot.example.yml" in done.stderr
    assert "Traceback" not in done.stderr


async def test_health_readiness_and_clean_shutdown(world: World) -> None:
    port = free_port()
    world.env["FIXBOT_HTTP_PORT"] = str(port)
    await world.start_app()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"ok": True, "database": True, "slack": True, "workers": True}
        assert "python_info" in (await client.get("/metrics")).text
    assert await world.stop_app(signal.SIGTERM) == 0
    assert "Traceback" not in world.app_log()
