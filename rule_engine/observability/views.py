"""The JSON shapes a deployment is shown in: one source for the CLI's ``--json`` and the HTTP API.

Each function reads a :class:`~rule_engine.DeploymentManager` through its public methods and returns a
JSON-ready ``dict``. ``rule-engine status --json`` prints :func:`status_view`, ``GET /api/v1/status``
answers it; the same holds for history, deploy and the control operations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rule_engine.observability.taps import taps_view

if TYPE_CHECKING:
    from rule_engine.control.status import DeploymentInfo
    from rule_engine.control.strategies import Strategy
    from rule_engine.deployment.manager import DeploymentManager

__all__ = [
    "advance_view",
    "conclude_view",
    "deploy_view",
    "history_view",
    "infos",
    "promote_view",
    "redact_url",
    "rollback_view",
    "status_view",
    "versions_view",
]


def redact_url(url: str) -> str:
    """A store URL fit to show: any password in it replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    credentials, at, host = authority.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"


def infos(manager: DeploymentManager) -> list[DeploymentInfo]:
    """The info of every version kept in history, oldest first."""
    found = (manager.get_deployment_info(v) for v in manager.get_deployment_history())
    return [i for i in found if i is not None]


def status_view(manager: DeploymentManager, store_url: str, kept: list[DeploymentInfo] | None = None) -> dict[str, Any]:
    """What serves, the rollout in progress and health per serving version (``status --json``).

    ``kept`` is :func:`infos` of the manager when the caller has it already.
    """
    active = manager.get_active_version_id()
    rollout = manager.get_rollout_status()
    kept = infos(manager) if kept is None else kept
    serving = {active} | ({rollout.version_id} if rollout else set())
    return {
        "store": store_url,
        "active_version": active,
        "rollout": rollout.to_dict() if rollout else None,
        "health": {i.version_id: i.health_metrics.to_dict() for i in kept if i.version_id in serving},
        "versions": [
            {
                "version_id": i.version_id,
                "state": i.state.value,
                "percentage": i.current_percentage,
                "strategy": i.strategy.kind,
                "healthy": i.health_metrics.verdict,
            }
            for i in kept
        ],
        **taps_view(manager.serving_cell),  # "shadow", "decision_log": only when attached
    }


def versions_view(manager: DeploymentManager) -> dict[str, Any]:
    """Every version kept in history with its full info (the ``versions`` of ``history --json``)."""
    return {"versions": [i.to_dict() for i in infos(manager)]}


def history_view(manager: DeploymentManager, limit: int, kept: list[DeploymentInfo] | None = None) -> dict[str, Any]:
    """Versions kept in history and the last ``limit`` audit entries (``history --json``)."""
    return {
        "versions": [i.to_dict() for i in (infos(manager) if kept is None else kept)],
        "audit": [e.to_dict() for e in manager.audit_log(limit=limit)],
    }


def deploy_view(manager: DeploymentManager, version_id: str, strategy: Strategy, store_url: str) -> dict[str, Any]:
    """The answer of a deploy (``deploy --json``)."""
    info = manager.get_deployment_info(version_id)
    return {
        "version_id": version_id,
        "state": info.state.value if info else None,
        "strategy": strategy.to_dict(),
        "percentage": info.current_percentage if info else 0.0,
        "store": store_url,
    }


def advance_view(manager: DeploymentManager, moved: bool) -> dict[str, Any]:
    """The answer of an advance (``advance --json``)."""
    rollout = manager.get_rollout_status()
    return {
        "advanced": moved,
        "active_version": manager.get_active_version_id(),
        "rollout": rollout.to_dict() if rollout else None,
    }


def promote_view(version_id: str) -> dict[str, Any]:
    """The answer of a promote (``promote --json``)."""
    return {"version_id": version_id, "active_version": version_id, "state": "active"}


def rollback_view(rolled_back: str | None, serving: str) -> dict[str, Any]:
    """The answer of a rollback (``rollback --json``)."""
    return {"rolled_back": rolled_back, "active_version": serving}


def conclude_view(winner: str) -> dict[str, Any]:
    """The answer of a conclude (``conclude --json``)."""
    return {"winner": winner, "active_version": winner}
