"""Helpers for the server tests: a manual clock, a manager with versions, an app with one token."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rule_engine import Canary, DeploymentManager
from rule_engine.server.app import ServerSettings, create_app
from rule_engine.server.auth import Tokens, hash_token
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2

TOKEN = "re_test-token-for-alice"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START = 1_767_614_400.0  # 2026-01-05T12:00:00Z


@dataclass
class ManualClock:
    """A clock tests move by hand (the manager reads it; nothing sleeps)."""

    t: float = START

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def bundle_json(path: Any = GATEWAY_V1) -> dict[str, Any]:
    """A bundle file's JSON object."""
    with open(path, encoding="utf-8") as file:
        data: dict[str, Any] = json.load(file)
    return data


def tokens() -> Tokens:
    """One token, named alice."""
    return Tokens({"alice": hash_token(TOKEN)})


def make_app(manager: DeploymentManager, clock: ManualClock | None = None, **settings: Any) -> Any:
    """The app over ``manager`` with the alice token."""
    chosen = {"tokens": tokens(), "store_url": "memory://", **settings}
    return create_app(manager, ServerSettings(**chosen), clock=clock)


def canary_in_progress(clock: ManualClock) -> DeploymentManager:
    """v1 active, v2 in a canary at stage 1 of (10, 50, 100) with 60 s stages."""
    manager = DeploymentManager(clock=clock)
    v1 = manager.prepare_deployment(GATEWAY_V1, deployed_by="setup")
    manager.activate_deployment(v1, actor="setup")
    v2 = manager.prepare_deployment(GATEWAY_V2, Canary((10, 50, 100), 60), deployed_by="setup")
    manager.activate_deployment(v2, actor="setup")
    return manager
