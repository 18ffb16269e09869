"""The library never prints: its events go through stdlib logging (no handler of its own); the CLI logs to stderr."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import structlog
from click.testing import CliRunner
from structlog.testing import capture_logs

from rule_engine.cli import cli
from rule_engine.logs import LOGGER_NAME, get_logger

ROOT = Path(__file__).resolve().parent.parent
V1 = str(ROOT / "bundles" / "gateway-v1.json")


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


EVERY_LEVEL = """
    from rule_engine.logs import get_logger
    log = get_logger()
    log.debug("probe.debug", n=1)
    log.info("probe.info", version_id="v-1")
    log.warning("probe.warning", version_id="v-1")
    log.error("probe.error", version_id="v-1")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("probe.exception", version_id="v-1")
    print("done")
"""


def test_library_events_print_nothing_in_a_host_that_configures_no_logging() -> None:
    """Unconfigured host: no event on stdout nor stderr at any level (the NullHandler stops the last resort)."""
    result = _python(EVERY_LEVEL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    assert result.stderr == ""


def test_a_host_that_configures_logging_receives_the_events_with_their_fields() -> None:
    """With logging.basicConfig the events reach the host's handlers: name, level, event and fields."""
    result = _python(
        "import logging, sys\nlogging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        + textwrap.dedent(EVERY_LEVEL)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    lines = result.stderr.splitlines()
    assert "INFO:rule_engine:event=probe.info version_id=v-1" in lines
    assert "WARNING:rule_engine:event=probe.warning version_id=v-1" in lines
    assert "ERROR:rule_engine:event=probe.error version_id=v-1" in lines
    assert not any("probe.debug" in line for line in lines)  # below the host's level
    assert "RuntimeError: boom" in result.stderr  # log.exception keeps the traceback


def test_a_host_program_that_deploys_and_follows_prints_nothing(tmp_path: Path) -> None:
    """D26: deploy, follow, fail a hook, roll back: nothing on stdout or stderr without logging configured."""
    code = """
        import sys
        from rule_engine import DeploymentManager, RuleEngine
        url, bundle = sys.argv[1], sys.argv[2]
        writer = DeploymentManager.open(url, follow=False)
        follower = DeploymentManager.open(url, poll_interval=0.01)
        def broken_hook(event):
            raise RuntimeError("hook fails")
        writer.subscribe("after_swap", broken_hook)
        first = writer.prepare_deployment(bundle, deployed_by="host")
        writer.activate_deployment(first)
        second = writer.prepare_deployment(bundle, deployed_by="host")
        writer.activate_deployment(second)
        writer.rollback(actor="host")
        for _ in range(500):
            if follower.refresh() or follower.get_active_version_id() == first:
                break
        RuleEngine(follower).evaluate({"user_id": "u-1"})
        writer.tick()
        follower.close()
        writer.close()
    """
    result = _python(code, f"sqlite:///{tmp_path / 'state.db'}", V1)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")


def test_capture_logs_still_captures_library_events() -> None:
    """Tests keep asserting on event names and fields with structlog.testing.capture_logs()."""
    with capture_logs() as logs:
        get_logger().warning("probe.captured", version_id="v-9")
    assert {"event": "probe.captured", "version_id": "v-9", "log_level": "warning"} in logs


def test_the_package_logger_has_a_null_handler_and_the_cli_leaves_it_as_it_was(tmp_path: Path) -> None:
    """The 'rule_engine' logger carries a NullHandler; after an in-process CLI run its handlers and level are restored."""
    logger = logging.getLogger(LOGGER_NAME)
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    before = (list(logger.handlers), logger.level, logger.propagate, structlog.is_configured())
    result = CliRunner().invoke(cli, ["--store", f"sqlite:///{tmp_path / 's.db'}", "-v", "deploy", V1])
    assert result.exit_code == 0, result.output
    assert (list(logger.handlers), logger.level, logger.propagate, structlog.is_configured()) == before


def test_the_cli_writes_library_events_to_stderr_never_stdout(tmp_path: Path) -> None:
    """rule-engine -v deploy: events on stderr (one line each), stdout only the command's own output."""
    script = Path(sys.executable).parent / "rule-engine"
    result = subprocess.run(
        [str(script), "--store", f"sqlite:///{tmp_path / 's.db'}", "-v", "deploy", V1],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deployed ")
    assert "deployment.prepared" not in result.stdout
    assert "deployment.prepared" in result.stderr
    assert "deployment.activated" in result.stderr
    quiet = subprocess.run(
        [str(script), "--store", f"sqlite:///{tmp_path / 's.db'}", "status"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (quiet.returncode, quiet.stderr) == (0, "")  # without -v: errors only
