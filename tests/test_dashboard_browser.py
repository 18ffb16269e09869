"""The dashboard in a real headless Chromium (Debian's chromium, driven by Playwright).

The page loads and shows the active version; a canary stage moves on screen when the controller
advances it (time driven by the manager's clock, not by sleeping); a rollback clicked in the page,
with the token typed into its prompt, changes the store. Under CI=true a missing chromium fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rule_engine import DeploymentManager, HealthThresholds, RuleEngine
from tests._support_server import TOKEN, ManualClock, canary_in_progress, make_app

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]
UI_TIMEOUT_MS = 15_000  # how long the page may take to show a change (never a wait for a stage)


def _require_chromium() -> None:
    missing = []
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class LiveServer:
    """uvicorn serving an app on a free loopback port, in a thread, for the duration of a test."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:  # bounded: uvicorn starts within 20 s or the test fails
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert self.thread.is_alive(), "uvicorn stopped"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def browser_page() -> Iterator[Any]:
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            headless=True,
            args=LAUNCH_ARGS,
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def test_the_dashboard_follows_a_canary_and_rolls_it_back(browser_page: Any, tmp_path: Path) -> None:
    """Active version shown; stage 1 -> 2 on screen when advanced; pause and rollback clicks change the store."""
    from playwright.sync_api import expect

    page = browser_page
    clock = ManualClock()
    manager: DeploymentManager = canary_in_progress(clock)
    engine = RuleEngine(manager)
    for i in range(50):
        engine.evaluate({"request": {"path": "/x"}}, key=f"user-{i}")
    rollout = manager.get_rollout_status()
    assert rollout is not None
    stable, candidate = rollout.stable_version_id, rollout.version_id
    app = make_app(manager, clock, events_interval=0.2, max_event_secs=60)
    with LiveServer(app) as server:
        page.goto(server.url)
        expect(page.locator("#active-version")).to_have_text(stable)
        expect(page.locator("#rollout-version")).to_have_text(candidate)
        expect(page.locator("#rollout-stage")).to_contain_text("stage 1/3")
        expect(page.locator("#rollout-percent")).to_have_text("10%")
        expect(page.locator("#connection")).to_have_text("live")

        clock.advance(61)  # the stage has lasted its 60 s on the manager's clock
        assert manager.advance_rollout(actor="controller")
        expect(page.locator("#rollout-stage")).to_contain_text("stage 2/3")
        expect(page.locator("#rollout-percent")).to_have_text("50%")
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        page.on("dialog", lambda dialog: dialog.accept(TOKEN))
        page.locator("#op-pause").click()
        expect(page.locator("#message")).to_have_text("pause: done")
        paused = manager.state.rollout
        assert paused is not None
        assert paused.paused_at is not None  # the store holds the pause
        assert manager.audit_log()[-1].action == "pause"
        page.locator("#op-rollback").click()
        expect(page.locator("#message")).to_have_text("rollback: done")
        expect(page.locator("#rollout-none")).to_be_visible()
        page.close()  # ends the event stream before the server stops
    assert manager.get_rollout_status() is None
    assert manager.get_active_version_id() == stable
    last = manager.audit_log()[-1]
    assert (last.action, last.actor, last.reason) == ("rollback", "alice", "rolled back from the dashboard")


def test_a_wrong_token_in_the_page_changes_nothing(browser_page: Any) -> None:
    """The page reports the 401 and the store is unchanged."""
    from playwright.sync_api import expect

    page = browser_page
    clock = ManualClock()
    manager = canary_in_progress(clock)
    before = manager.snapshot.revision
    with LiveServer(make_app(manager, clock, events_interval=0.2, max_event_secs=60)) as server:
        page.goto(server.url)
        expect(page.locator("#connection")).to_have_text("live")
        page.on("dialog", lambda dialog: dialog.accept("re_not-the-token"))
        page.locator("#op-promote").click()
        expect(page.locator("#message")).to_contain_text("not valid")
        page.close()
    assert manager.snapshot.revision == before
    assert manager.get_rollout_status() is not None


class _RefusingGate:
    def ask(self, question: Any) -> Any:
        from rule_engine.deployment.gating import GateAnswer

        return GateAnswer(False, "gate load-test (HTTP 503): p99 too high")


def test_the_dashboard_shows_the_gate_hold_shadow_figures_and_webhook_state(
    browser_page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate's reply as the hold reason; a status JSON's shadow figures; webhook delivery counts."""
    from playwright.sync_api import expect

    from rule_engine.observability.webhooks import Notifier, Webhook
    from rule_engine.server import feed
    from rule_engine.server.app import ServerSettings, create_app
    from tests._support_http import Receiver

    real_status_view = feed.status_view

    def with_shadow(*args: Any) -> dict[str, Any]:  # the shadow phase's figures, as a status JSON may carry them
        view: dict[str, Any] = real_status_view(*args)
        view["shadow"] = {"compared": 1200, "disagreement_rate": 0.0125, "verdict": "agrees", "detail": {"x": 1}}
        return view

    monkeypatch.setattr(feed, "status_view", with_shadow)
    page = browser_page
    clock = ManualClock()
    manager = canary_in_progress(clock)
    manager.configure(thresholds=HealthThresholds(min_evaluations=10))
    rollout = manager.get_rollout_status()
    assert rollout is not None
    manager.update_health_metrics(rollout.stable_version_id, 100)
    manager.update_health_metrics(rollout.version_id, 100)
    with Receiver() as receiver:
        notifier = Notifier([Webhook(name="chat", url=receiver.url)]).attach(manager)
        manager.set_gate(_RefusingGate())
        clock.advance(61)
        manager.tick()  # the gate refuses: held, told to the chat webhook
        assert notifier.wait_idle(20)
        settings = ServerSettings(store_url="memory://", events_interval=0.2, max_event_secs=60)
        with LiveServer(create_app(manager, settings, clock=clock, notifier=notifier)) as server:
            page.goto(server.url)
            expect(page.locator("#holding")).to_have_text("holding: gate load-test (HTTP 503): p99 too high")
            expect(page.locator('#shadow-figures dd[data-key="disagreement_rate"]')).to_have_text("1.25%")
            expect(page.locator('#shadow-figures dd[data-key="verdict"]')).to_have_text("agrees")
            expect(page.locator("#webhook-state")).to_have_text("queue 0 · chat: 1 delivered")
            expect(page.locator("#webhooks")).to_contain_text("rollout.held")
            page.close()
        notifier.close()


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI=true: the browser test must fail, not skip, when chromium is absent."""
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium"):
        _require_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium"):
        _require_chromium()
