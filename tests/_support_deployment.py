"""Helpers shared by the deployment-manager tests: small bundles and paths to the example bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "bundles"
GATEWAY_V1 = BUNDLES / "gateway-v1.json"
GATEWAY_V2 = BUNDLES / "gateway-v2.json"
GATEWAY_V3_BROKEN = BUNDLES / "gateway-v3-broken.json"
START = "2026-01-05 12:00:00"  # a frozen "now" for freezegun


def mini_bundle(version: str = "1.0.0", *, bundle_id: str = "mini", expect: str = "deny") -> dict[str, Any]:
    """A one-rule bundle (``x == 1`` -> deny) whose single test expects ``expect`` for ``x == 1``."""
    return {
        "bundle_id": bundle_id,
        "version": version,
        "default": {"decision": "allow", "reason": "default"},
        "rules": [
            {
                "id": "deny-x",
                "priority": 1,
                "when": {"field": "x", "op": "eq", "value": 1},
                "then": {"decision": "deny", "reason": "x is 1"},
            }
        ],
        "tests": [{"name": "x-denied", "event": {"x": 1}, "expect": {"decision": expect}}],
    }
