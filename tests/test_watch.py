"""'rule-engine watch': deploy new or changed bundle files (and an HTTP source), refuse broken ones."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rule_engine import BlueGreen, Canary, DeploymentManager
from rule_engine.cli import cli
from rule_engine.observability.watch import BundleWatcher, DirectorySource, Report, UrlSource, watch_directory
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2, mini_bundle
from tests._support_http import Received, Receiver, Reply

WAIT_SECS = 20.0


def write(path: Path, data: dict[str, Any] | bytes) -> None:
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())


def kinds(reports: list[Report]) -> list[str]:
    return [r.kind for r in reports]


@pytest.fixture
def manager() -> DeploymentManager:
    return DeploymentManager()


def test_a_new_file_is_deployed_and_an_unchanged_one_is_not(manager: DeploymentManager, tmp_path: Path) -> None:
    """The first scan deploys; scanning the same content again does nothing."""
    write(tmp_path / "policy.json", GATEWAY_V1.read_bytes())
    watcher = BundleWatcher(manager, BlueGreen())
    source = DirectorySource(tmp_path)
    first = watcher.scan(source)
    assert kinds(first) == ["deployed"]
    assert manager.get_active_version_id() == first[0].version_id
    assert watcher.scan(source) == []
    assert len(manager.get_deployment_history()) == 1


def test_a_changed_file_is_deployed_with_the_strategy(manager: DeploymentManager, tmp_path: Path) -> None:
    """A new version of the file starts a canary with the given stages."""
    path = tmp_path / "policy.json"
    write(path, GATEWAY_V1.read_bytes())
    BundleWatcher(manager, BlueGreen()).scan(DirectorySource(tmp_path))
    watcher = BundleWatcher(manager, Canary((10, 100), 60))
    assert watcher.scan(DirectorySource(tmp_path)) == []  # already serving: not deployed again
    write(path, GATEWAY_V2.read_bytes())
    assert kinds(watcher.scan(DirectorySource(tmp_path))) == ["deployed"]
    status = manager.get_rollout_status()
    assert status is not None
    assert (status.strategy, status.percentage) == ("canary", 10.0)


def test_an_invalid_file_is_reported_once_never_deployed_and_the_watch_goes_on(
    manager: DeploymentManager, tmp_path: Path
) -> None:
    """Broken JSON and a bundle whose own tests fail are refused; a later good file is deployed."""
    write(tmp_path / "a-broken.json", b'{"bundle_id": ')
    write(tmp_path / "b-failing-tests.json", mini_bundle(expect="allow"))
    watcher = BundleWatcher(manager, BlueGreen())
    reports = watcher.scan(DirectorySource(tmp_path))
    assert kinds(reports) == ["invalid", "invalid"]
    assert "not deployed" in reports[0].message
    assert manager.get_active_version_id() is None
    assert watcher.scan(DirectorySource(tmp_path)) == []  # reported once, not at every scan
    write(tmp_path / "c-good.json", GATEWAY_V1.read_bytes())
    assert kinds(watcher.scan(DirectorySource(tmp_path))) == ["deployed"]
    write(tmp_path / "a-broken.json", mini_bundle(bundle_id="gateway-access"))  # fixed: new content, deployed
    assert kinds(watcher.scan(DirectorySource(tmp_path))) == ["deployed"]


def test_hidden_temporary_files_are_ignored_until_renamed(manager: DeploymentManager, tmp_path: Path) -> None:
    """An atomic write (a dot-file renamed over the target) deploys the complete file only."""
    temporary = tmp_path / ".policy.json.tmp"
    write(temporary, GATEWAY_V1.read_bytes())
    watcher = BundleWatcher(manager, BlueGreen())
    assert watcher.scan(DirectorySource(tmp_path)) == []
    os.replace(temporary, tmp_path / "policy.json")
    assert kinds(watcher.scan(DirectorySource(tmp_path))) == ["deployed"]


def test_a_kubernetes_configmap_symlink_swap_deploys_the_new_content(
    manager: DeploymentManager, tmp_path: Path
) -> None:
    """policy.json -> ..data/policy.json, ..data -> ..2026_01; swapping ..data deploys the new bundle."""
    first = tmp_path / "..2026_01_01"
    first.mkdir()
    write(first / "policy.json", GATEWAY_V1.read_bytes())
    os.symlink(first.name, tmp_path / "..data")
    os.symlink("..data/policy.json", tmp_path / "policy.json")
    watcher = BundleWatcher(manager, BlueGreen())
    v1 = watcher.scan(DirectorySource(tmp_path))
    assert kinds(v1) == ["deployed"]
    second = tmp_path / "..2026_01_02"
    second.mkdir()
    write(second / "policy.json", GATEWAY_V2.read_bytes())
    os.symlink(second.name, tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # what the kubelet does: one atomic rename
    v2 = watcher.scan(DirectorySource(tmp_path))
    assert kinds(v2) == ["deployed"]
    assert manager.get_active_version_id() == v2[0].version_id != v1[0].version_id


def test_a_rollout_in_progress_is_retried_at_the_next_scan(manager: DeploymentManager, tmp_path: Path) -> None:
    """A second file while a canary runs is not lost: it is retried once the rollout ends."""
    write(tmp_path / "a.json", GATEWAY_V1.read_bytes())
    BundleWatcher(manager, BlueGreen()).scan(DirectorySource(tmp_path))
    watcher = BundleWatcher(manager, Canary((10, 100), 60))
    write(tmp_path / "b.json", GATEWAY_V2.read_bytes())
    watcher.scan(DirectorySource(tmp_path))
    write(tmp_path / "c.json", mini_bundle(bundle_id="gateway-access"))
    assert kinds(watcher.scan(DirectorySource(tmp_path))) == ["retry"]
    manager.promote(actor="t")
    assert kinds(watcher.scan(DirectorySource(tmp_path))) == ["deployed"]


def test_watchfiles_deploys_a_file_written_while_watching(manager: DeploymentManager, tmp_path: Path) -> None:
    """The real watcher loop (watchfiles, debounced) picks up a new file, then stops when asked."""
    stop = threading.Event()
    reports: list[Report] = []
    watcher = BundleWatcher(manager, BlueGreen(), report=reports.append)
    thread = threading.Thread(
        target=watch_directory,
        args=(watcher, DirectorySource(tmp_path), stop),
        kwargs={"debounce_ms": 50, "rescan_secs": 2.0},
    )
    thread.start()
    try:
        time.sleep(0.3)  # let the OS watch start (not a wait for a stage)
        write(tmp_path / ".tmp", GATEWAY_V1.read_bytes())
        os.replace(tmp_path / ".tmp", tmp_path / "policy.json")
        deadline = time.monotonic() + WAIT_SECS
        while manager.get_active_version_id() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=WAIT_SECS)
    assert not thread.is_alive()
    assert kinds(reports) == ["deployed"]


# --- an HTTP source ----------------------------------------------------------------------------------


class BundleServer:
    """Serves a bundle with an ETag, answering 304 to a matching If-None-Match."""

    def __init__(self) -> None:
        self.body = GATEWAY_V1.read_bytes()
        self.etag = '"v1"'

    def __call__(self, request: Received) -> Reply:
        if request.headers.get("If-None-Match") == self.etag:
            return Reply(304, b"")
        return Reply(200, self.body, {"ETag": self.etag, "Content-Type": "application/json"})


def test_an_http_source_is_polled_with_etags(manager: DeploymentManager) -> None:
    """200 deploys; the next poll sends If-None-Match and a 304 changes nothing; a new ETag deploys again."""
    served = BundleServer()
    with Receiver(served) as receiver:
        source = UrlSource(receiver.url)
        watcher = BundleWatcher(manager, BlueGreen())
        assert kinds(watcher.scan(source)) == ["deployed"]
        assert watcher.scan(source) == []
        assert receiver.received[1].headers["If-None-Match"] == '"v1"'
        served.body, served.etag = GATEWAY_V2.read_bytes(), '"v2"'
        assert kinds(watcher.scan(source)) == ["deployed"]
        served.body, served.etag = b"{not json", '"v3"'
        refused = watcher.scan(source)
    assert kinds(refused) == ["invalid"]
    assert manager.get_deployment_info(manager.get_active_version_id() or "") is not None
    assert len(manager.get_deployment_history()) == 2


def test_an_unreachable_or_failing_url_is_reported(manager: DeploymentManager) -> None:
    """A 500 or a closed port is an error report, never an exception."""
    with Receiver(Reply(500, b"oops")) as receiver:
        assert kinds(BundleWatcher(manager, BlueGreen()).scan(UrlSource(receiver.url))) == ["error"]
        url = receiver.url
    assert kinds(BundleWatcher(manager, BlueGreen()).scan(UrlSource(url, timeout=2))) == ["error"]


# --- the command -------------------------------------------------------------------------------------


def test_watch_once_deploys_and_exits(tmp_path: Path) -> None:
    """'rule-engine watch DIR --once' deploys what is new and prints one line per bundle."""
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    write(bundles / "policy.json", GATEWAY_V1.read_bytes())
    store = f"sqlite:///{tmp_path / 'state.db'}"
    result = CliRunner().invoke(cli, ["--store", store, "watch", str(bundles), "--once", "--by", "ci"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("deployed: ")
    status = json.loads(CliRunner().invoke(cli, ["--store", store, "status", "--json"]).output)
    assert status["active_version"].startswith("gateway-access@1.0.0")


def test_watch_once_reports_a_broken_file_with_an_error_line(tmp_path: Path) -> None:
    """A broken bundle: 'error: FILE: ...' and exit 1; nothing deployed."""
    write(tmp_path / "policy.json", b"[]")
    result = CliRunner().invoke(cli, ["--store", "memory://", "watch", str(tmp_path), "--once"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "policy.json" in result.stderr


def test_watch_needs_exactly_one_source() -> None:
    """Neither or both of DIR and --url is a usage error."""
    result = CliRunner().invoke(cli, ["--store", "memory://", "watch"])
    assert result.exit_code == 2
