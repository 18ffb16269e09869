"""Helpers for the health, rollback, controller and engine tests: small bundles, events, traffic."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rule_engine import Decision, DeploymentManager, HealthThresholds, RuleEngine
from rule_engine.testing import ManualClock as ManualClock  # the public kit's clock, for the tests importing it here

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "bundles"
GATEWAY_EVENTS = ROOT / "tests" / "cases" / "events" / "gateway.jsonl"
START = "2026-03-01 12:00:00"

#: Small enough that a few hundred evaluations give a verdict, as in the default thresholds.
THRESHOLDS = HealthThresholds(min_evaluations=200)


def bundle(version: str, *, checks_amount: bool = False, on_error: str = "review") -> dict[str, Any]:
    """A tiny bundle; with ``checks_amount`` it compares ``amount`` with a number (errors on strings)."""
    rules: list[dict[str, Any]] = [
        {
            "id": "deny-banned",
            "priority": 100,
            "when": {"field": "banned", "op": "eq", "value": True},
            "then": {"decision": "deny", "reason": "banned"},
        }
    ]
    if checks_amount:
        rules.append(
            {
                "id": "review-big-amount",
                "priority": 50,
                "when": {"field": "amount", "op": "gt", "value": 1000},
                "then": {"decision": "review", "reason": "big amount"},
            }
        )
    return {
        "bundle_id": "health-demo",
        "version": version,
        "default": {"decision": "allow"},
        "on_error": {"decision": on_error, "reason": "evaluation failed"},
        "rules": rules,
    }


def event(i: int, *, bad: bool = False, prefix: str = "u") -> dict[str, Any]:
    """Event number ``i``; ``bad`` makes ``amount`` a string, which a numeric rule cannot compare."""
    return {"user_id": f"{prefix}{i}", "banned": i % 10 == 1, "amount": "lots" if bad else i % 2000}


def drive(engine: RuleEngine, n: int, *, error_every: int = 0, prefix: str = "u") -> list[Decision]:
    """Evaluate ``n`` events; every ``error_every``-th one is bad (0: none)."""
    return [engine.evaluate(event(i, bad=error_every > 0 and i % error_every == 0, prefix=prefix)) for i in range(n)]


def gateway_events() -> list[dict[str, Any]]:
    """The realistic gateway events (each with its expected v1/v2 decisions)."""
    return [json.loads(line) for line in GATEWAY_EVENTS.read_text().splitlines() if line.strip()]


def gateway_traffic(rounds: int, prefix: str = "user") -> Iterator[dict[str, Any]]:
    """The gateway events, ``rounds`` times over, each copy with its own ``user_id``."""
    cases = gateway_events()
    for r in range(rounds):
        for i, case in enumerate(cases):
            yield {**case["event"], "user_id": f"{prefix}-{r}-{i}"}


def manager_with_stable(*, auto_rollback: bool = True, **kwargs: Any) -> tuple[DeploymentManager, str]:
    """A manager serving a healthy ``1.0.0`` (blue-green)."""
    manager = DeploymentManager(thresholds=kwargs.pop("thresholds", THRESHOLDS), auto_rollback=auto_rollback, **kwargs)
    stable = manager.prepare_deployment(bundle("1.0.0"))
    manager.activate_deployment(stable)
    return manager, stable
