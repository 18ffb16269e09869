"""``rule-engine demo``: the whole story in under a minute, on a temporary SQLite store.

1. ``gateway-v1`` is deployed blue-green and takes all traffic.
2. Two evaluator threads send realistic gateway events through real :class:`RuleEngine` evaluators.
3. ``gateway-v2`` is canaried 10 -> 25 -> 50 -> 100 %; the controller advances it while it is healthy.
4. ``gateway-v3-broken`` (fails at run time on events whose ``session.age_secs`` is a string) is
   canaried; the controller sees its error rate and rolls it back automatically.

A timeline line per second shows the stage, the candidate's traffic share, the recent error rate per
version and the decisions given; a closing summary says what serves and what was rolled back, and why.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from rule_engine.control.strategies import BlueGreen, Canary
from rule_engine.deployment.manager import DeploymentManager
from rule_engine.errors import StoreError
from rule_engine.health.thresholds import HealthThresholds
from rule_engine.serving.engine import RuleEngine

__all__ = ["bundle_text", "make_event", "run_demo"]

Echo = Callable[[str], Any]
_STAGES = (10, 25, 50, 100)
_COUNTRIES = ("US", "US", "US", "US", "DE", "FR", "GB", "BR", "IN", "NL", "CA", "SG", "KP", "IR")
_BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
)
_APP = "ShopApp/5.2.1 (iPhone; iOS 17.4.1)"
_BOTS = ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "python-requests/2.31.0")


def bundle_text(name: str) -> str:
    """The text of an example bundle (``gateway-v1.json``...): packaged copy first, else the source tree."""
    packaged = resources.files("rule_engine").joinpath("bundles", name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    source = Path(__file__).resolve().parent.parent / "bundles" / name
    return source.read_text(encoding="utf-8")


def make_event(rng: random.Random) -> tuple[dict[str, Any], str]:
    """A realistic gateway event and its routing key (the user id).

    Like production traffic, the public ``api_gateway`` sends ``session.age_secs`` as a string and the
    mobile gateway as a number; about half the events carry the string form.
    """
    user = f"u-{rng.randrange(1, 50_000):05d}"
    country = rng.choice(_COUNTRIES)
    roll = rng.random()
    if roll < 0.5:
        flow = rng.choice(("login", "login", "checkout"))
        return {
            "agent_id": "api_gateway",
            "flow_id": flow,
            "request": {"method": "POST", "path": f"/v1/{flow}"},
            "user": {"id": user, "allowlisted": False},
            "geo": {"country": country},
            "risk_score": round(rng.random(), 2),
            "device": {"known": rng.random() < 0.85},
            "user_agent": rng.choice(_BROWSERS),
            "session": {"age_secs": str(rng.randrange(5, 9000))},
        }, user
    if roll < 0.72:
        flow = rng.choice(("login", "checkout", "search"))
        return {
            "agent_id": "mobile_gateway",
            "flow_id": flow,
            "request": {"method": "POST", "path": f"/m/v2/{flow}", "rate_per_min": rng.randrange(1, 200)},
            "user": {"id": user},
            "geo": {"country": country},
            "risk_score": round(rng.random(), 2),
            "device": {"known": rng.random() < 0.9},
            "user_agent": _APP,
            "session": {"age_secs": rng.randrange(5, 9000)},
        }, user
    if roll < 0.86:
        return {
            "agent_id": "api_gateway",
            "flow_id": "search",
            "request": {"method": "GET", "path": "/v1/search", "rate_per_min": rng.randrange(1, 300)},
            "user": {"id": user},
            "geo": {"country": country},
            "user_agent": rng.choice(_BROWSERS + _BOTS),
        }, user
    if roll < 0.95:
        domain = rng.choice(("gmail.com", "example.org", "mailinator.com", "outlook.com"))
        return {
            "agent_id": rng.choice(("api_gateway", "mobile_gateway")),
            "flow_id": "signup",
            "request": {"method": "POST", "path": "/v1/signup"},
            "user": {"id": user, "email": f"{user}@{domain}"},
            "geo": {"country": country},
            "user_agent": rng.choice(_BROWSERS),
        }, user
    return {
        "agent_id": "partner_api",
        "flow_id": rng.choice(("login", "checkout")),
        "request": {"method": "POST", "path": "/partner/v1/checkout"},
        "user": {"id": user},
        "geo": {"country": country},
        "risk_score": round(rng.random(), 2),
        "user_agent": rng.choice(_BOTS),
    }, user


class _Traffic:
    """Evaluator threads sending synthetic events; each thread counts its own decisions (no lock)."""

    def __init__(self, engine: RuleEngine, threads: int = 2, seed: int = 2026) -> None:
        self._engine = engine
        self._stop = threading.Event()
        self._counts: list[dict[tuple[str, str], int]] = [{} for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._run, args=(i, seed + i), name=f"demo-evaluator-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5.0)

    def _run(self, index: int, seed: int) -> None:
        rng = random.Random(seed)
        counts = self._counts[index]
        evaluate = self._engine.evaluate
        stop = self._stop
        n = 0
        while not stop.is_set():
            event, key = make_event(rng)
            decision = evaluate(event, key=key)
            slot = (decision.version_id or "-", decision.decision)
            counts[slot] = counts.get(slot, 0) + 1
            n += 1
            if n % 4 == 0:
                time.sleep(0.001)  # a steady few thousand events per second, leaving CPU for the controller

    def totals(self) -> dict[tuple[str, str], int]:
        total: dict[tuple[str, str], int] = {}
        for counts in self._counts:
            for slot, n in counts.copy().items():
                total[slot] = total.get(slot, 0) + n
        return total


class _Story:
    """Prints the timeline and keeps what the summary needs."""

    def __init__(self, manager: DeploymentManager, traffic: _Traffic, echo: Echo | None) -> None:
        self.manager = manager
        self.traffic = traffic
        self.echo = echo
        self.labels: dict[str, str] = {}
        self.start = time.monotonic()
        self._last_totals: dict[tuple[str, str], int] = {}

    def say(self, text: str = "") -> None:
        if self.echo is not None:
            self.echo(text)

    def label(self, version_id: str | None) -> str:
        return self.labels.get(version_id or "", version_id or "-")

    def line(self, ended: str | None = None) -> None:
        manager = self.manager
        rollout = manager.get_rollout_status()
        stable = manager.get_active_version_id()
        serving = list(dict.fromkeys(v for v in (stable, rollout.version_id if rollout else ended) if v))
        errors = []
        for version_id in serving:
            info = manager.get_deployment_info(version_id)
            if info is not None:
                errors.append(f"{self.label(version_id)} {info.health_metrics.window.error_rate:5.1%}")
        if rollout is not None:
            stage = f"{self.label(rollout.version_id)} stage {rollout.stage}/{len(rollout.stages)}"
            share = rollout.percentage
        else:
            stage = f"{self.label(stable)} active"
            share = 0.0
        totals = self.traffic.totals()
        delta: dict[str, int] = {}
        for (_, decision), n in totals.items():
            delta[decision] = delta.get(decision, 0) + n - self._last_totals.get((_, decision), 0)
        self._last_totals = totals
        served = sum(delta.values())
        decisions = " ".join(f"{d} {n}" for d, n in sorted(delta.items(), key=lambda kv: -kv[1]) if n)
        filled = round(20 * share / 100)
        bar = "[" + "#" * filled + "-" * (20 - filled) + "]"
        self.say(
            f"  t+{time.monotonic() - self.start:5.1f}s  {stage:<16} {bar} {share:5.1f}% to candidate"
            f"  | errors {', '.join(errors):<22} | {served:>5} decisions: {decisions}"
        )

    def watch(self, candidate: str, timeout: float) -> bool:
        """Print a line per second until ``candidate``'s rollout ends; False on timeout."""
        deadline = time.monotonic() + timeout
        next_line = time.monotonic() + 1.0
        last_share = self.manager.snapshot.share_bp
        self.say(f"  >> {self.label(candidate)} takes {last_share / 100:g}% of traffic (sticky by user id)")
        while time.monotonic() < deadline:
            time.sleep(0.05)
            snapshot = self.manager.snapshot
            candidate_now = snapshot.candidate.version_id if snapshot.candidate is not None else None
            if candidate_now != candidate:
                self.line(ended=candidate)
                return True
            if snapshot.share_bp != last_share:
                last_share = snapshot.share_bp
                self.say(f"  >> controller advanced {self.label(candidate)} to {snapshot.share_bp / 100:g}%")
            if time.monotonic() >= next_line:
                next_line += 1.0
                self.line()
        return False


def _open_store(store_url: str | None, workdir: str, **kwargs: Any) -> tuple[DeploymentManager, str]:
    url = store_url or f"sqlite:///{Path(workdir, 'state.db')}"
    try:
        return DeploymentManager.open(url, follow=False, **kwargs), url
    except (ImportError, StoreError, OSError):
        if store_url is not None:
            raise
        return DeploymentManager.open("memory://", follow=False, **kwargs), "memory:// (SQLite unavailable)"


def run_demo(*, fast: bool = False, store_url: str | None = None, echo: Echo | None = print) -> dict[str, Any]:
    """Run the demo; print the story through ``echo`` (None: silent). Returns the summary (``ok`` and more)."""
    stage_secs = 1.0 if fast else 2.5
    thresholds = HealthThresholds(
        max_error_rate=0.05,
        min_evaluations=40,
        window_secs=2.0 if fast else 3.0,
        bucket_secs=0.5,
        bake_secs=1.0,
    )
    with tempfile.TemporaryDirectory(prefix="rule-engine-demo-") as workdir:
        manager, url = _open_store(store_url, workdir, thresholds=thresholds, auto_rollback=True)
        try:
            return _play(manager, url, stage_secs, echo)
        finally:
            manager.close()


def _play(manager: DeploymentManager, url: str, stage_secs: float, echo: Echo | None) -> dict[str, Any]:
    traffic = _Traffic(RuleEngine(manager), threads=2)
    story = _Story(manager, traffic, echo)
    say = story.say
    canary = Canary(_STAGES, stage_secs)
    say(f"rule-engine demo  (store: {url})")
    say("")
    say("1. deploy gateway-v1 blue-green")
    v1 = manager.prepare_deployment(bundle_text("gateway-v1.json"), BlueGreen(), deployed_by="demo")
    manager.activate_deployment(v1, actor="demo")
    story.labels[v1] = "v1"
    say(f"   {v1} is active and serves all traffic")
    traffic.start()
    controller = manager.start_controller(interval=0.2)
    problem: str | None = None
    try:
        say("   2 evaluator threads send realistic gateway events (user ids as routing keys)")
        time.sleep(1.0)
        story.line()
        say("")
        say(f"2. canary gateway-v2: {canary.describe()}; the controller advances it while healthy")
        v2 = manager.prepare_deployment(bundle_text("gateway-v2.json"), canary, deployed_by="demo")
        story.labels[v2] = "v2"
        manager.activate_deployment(v2, actor="demo")
        if not story.watch(v2, timeout=30.0):
            problem = f"the canary of {v2} did not finish in time"
        elif manager.get_active_version_id() != v2:
            problem = f"{v2} did not become active"
        else:
            say(f"   >> {v2} is ACTIVE: it serves all traffic")
        v3 = ""
        if problem is None:
            say("")
            say(f"3. canary gateway-v3-broken: {canary.describe()}")
            say("   (its new rule compares session.age_secs with a number; api_gateway sends a string)")
            v3 = manager.prepare_deployment(bundle_text("gateway-v3-broken.json"), canary, deployed_by="demo")
            story.labels[v3] = "v3"
            manager.activate_deployment(v3, actor="demo")
            if not story.watch(v3, timeout=30.0):
                problem = f"{v3} was not rolled back in time"
            else:
                info = manager.get_deployment_info(v3)
                if info is None or info.state.value != "rolled_back":
                    problem = f"{v3} ended {info.state.value if info else 'evicted'}, not rolled back"
                else:
                    say(f"   >> {v3} ROLLED BACK automatically: {info.failure_reason}")
    finally:
        controller.stop()
        traffic.stop()
    return _summary(story, url, problem)


def _summary(story: _Story, url: str, problem: str | None) -> dict[str, Any]:
    manager, say = story.manager, story.say
    elapsed = time.monotonic() - story.start
    active = manager.get_active_version_id()
    versions: list[dict[str, Any]] = []
    for version_id in manager.get_deployment_history():
        info = manager.get_deployment_info(version_id)
        if info is None:
            continue
        versions.append(
            {
                "label": story.label(version_id),
                "version_id": version_id,
                "state": info.state.value,
                "strategy": info.strategy.describe(),
                "evaluations": info.health_metrics.total_evaluations,
                "error_rate": info.health_metrics.error_rate,
                "failure_reason": info.failure_reason,
            }
        )
    rolled_back: list[dict[str, Any]] = [
        {"version_id": e.version_id, "by": e.actor, "reason": e.reason, "at": e.at}
        for e in manager.audit_log()
        if e.to_state == "rolled_back"
    ]
    served = sum(story.traffic.totals().values())
    say("")
    say("summary")
    for v in versions:
        why = f"  reason: {v['failure_reason']}" if v["failure_reason"] else ""
        say(
            f"  {v['label']:<3} {v['version_id']:<34} {v['state'].upper():<12} {v['strategy']:<48}"
            f" {v['evaluations']:>7,} evaluations, {v['error_rate']:5.1%} errors{why}"
        )
    say(f"  now serving: {story.label(active)} ({active})")
    for r in rolled_back:
        say(f"  rolled back: {story.label(r['version_id'])} by {r['by']}: {r['reason']}")
    say(f"  {served:,} events decided by 2 evaluator threads in {elapsed:.1f}s; store {url}")
    if problem:
        say(f"  PROBLEM: {problem}")
    return {
        "ok": problem is None,
        "problem": problem,
        "store": url,
        "active_version": active,
        "versions": versions,
        "rolled_back": rolled_back,
        "evaluations": served,
        "elapsed_secs": round(elapsed, 2),
    }
