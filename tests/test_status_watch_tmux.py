"""``rule-engine status --watch`` in a real terminal (tmux): it redraws in place and Ctrl-C exits with status 0.

Needs tmux; under CI (``CI=true``) a missing tmux fails the test instead of skipping it (.ci/run installs it).
Every wait is a bounded poll of the terminal's screen, never a wait for a rollout stage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rule_engine.cli import cli
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2

TMUX = shutil.which("tmux")
if TMUX is None and os.environ.get("CI") == "true":
    pytest.fail("tmux is required under CI=true (install it: apt-get install -y tmux)", pytrace=False)
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


def _screen(socket: str, session: str) -> str:
    assert TMUX is not None
    done = subprocess.run(
        [TMUX, "-L", socket, "capture-pane", "-p", "-t", session],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.stdout


def _until(socket: str, session: str, text: str, seconds: float = 20.0) -> str:
    deadline = time.monotonic() + seconds
    screen = ""
    for _ in range(400):  # bounded in count and time
        screen = _screen(socket, session)
        if text in screen or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return screen


def test_status_watch_refreshes_in_place_and_ctrl_c_exits_zero(tmp_path: Path) -> None:
    """The view shows stage, share, next step and health, is redrawn (not scrolled), and Ctrl-C gives exit 0."""
    assert TMUX is not None
    url = f"sqlite:///{tmp_path / 'state.db'}"
    for args in ([str(GATEWAY_V1)], [str(GATEWAY_V2), "--stages", "10,50,100", "--stage-duration", "600"]):
        assert CliRunner().invoke(cli, ["--store", url, "deploy", *args]).exit_code == 0
    socket, session = f"re-watch-{os.getpid()}", "watch"
    command = (
        f"{Path(sys.executable).parent / 'rule-engine'} --store {url} status --watch --interval 0.1; "
        "echo EXIT=$?; sleep 60"
    )
    subprocess.run(
        [TMUX, "-L", socket, "new-session", "-d", "-s", session, "-x", "120", "-y", "40", command],
        check=True,
        timeout=10,
        env={**os.environ, "TERM": "xterm"},
    )
    try:
        screen = _until(socket, session, "next step in")
        assert "rollout: canary of gateway-access@2.0.0" in screen
        assert "stage 1/3, 10%" in screen
        assert "errors over" in screen
        first = screen
        for _ in range(200):  # until a redraw shows a later time (the header has it to the second)
            screen = _screen(socket, session)
            if screen != first and "next step in" in screen:
                break
            time.sleep(0.05)
        assert screen != first
        assert screen.count("rule-engine status --watch") == 1  # redrawn in place, not scrolled
        subprocess.run([TMUX, "-L", socket, "send-keys", "-t", session, "C-c"], check=True, timeout=10)
        screen = _until(socket, session, "EXIT=")
        assert "EXIT=0" in screen
        assert "Traceback" not in screen
    finally:
        subprocess.run([TMUX, "-L", socket, "kill-server"], check=False, timeout=10, capture_output=True)
