"""The JSON shapes a deployment is shown in: one source for the CLI's ``--json`` and the HTTP API.

Each function reads a :class:`~rule_engine.DeploymentManager` through its public methods and returns a
JSON-ready ``dict``. ``rule-engine status --json`` prints :func:`status_view`, ``GET /api/v1/status``
answers it; the same holds for history, deploy and the control operations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rule_engine.clock import iso
from rule_engine.control.status import scheduled_versions
from rule_engine.observability.taps import taps_view
from rule_engine.stores._pg_conninfo import redact_url  # re-exported: the one masking rule for every store URL

if TYPE_CHECKING:
    from rule_engine.control.instances import FleetView
    from rule_engine.control.status import DeploymentInfo
    from rule_engine.control.strategies import Strategy
    from rule_engine.deployment.manager import DeploymentManager

__all__ = [
    "advance_view",
    "conclude_view",
    "deploy_view",
    "fleet_status",
    "fleet_view",
    "history_view",
    "infos",
    "promote_view",
    "redact_url",
    "rollback_view",
    "status_view",
    "versions_view",
]


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
        "store": redact_url(store_url),
        "deployment": manager.store.deployment,  # None: a store nothing was committed to yet
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
        "scheduled": [s.to_dict() for s in scheduled_versions(manager.state)],
        "fleet": fleet_status(manager),
        **taps_view(manager.serving_cell),  # "shadow", "decision_log": only when attached
    }


def fleet_status(manager: DeploymentManager, view: FleetView | None = None) -> dict[str, Any]:
    """``status --json``'s ``fleet``: ``{"instances": N, "converged", "serving_revision", "lagging": [...]}``.

    Reads the store's instance rows once (one query) and compares them with the manager's state.
    """
    view = manager.fleet.view() if view is None else view
    return {**view.to_dict(), "summary": view.summary()}


def fleet_view(manager: DeploymentManager) -> dict[str, Any]:
    """``rule-engine fleet --json`` and ``GET /api/v1/fleet``: every registered instance, and the summary."""
    view = manager.fleet.view()
    lagging = {lag.instance.instance_id: lag.reason for lag in view.lagging}
    return {
        "instances": [
            {
                "instance_id": i.instance_id,
                "host": i.host,
                "pid": i.pid,
                "revision": i.revision,
                "serving": i.serving,
                "percent": i.percent,
                "stale": lagging[i.instance_id] if lagging.get(i.instance_id, "").startswith("stale") else None,
                "lagging": lagging.get(i.instance_id),
                "last_seen": iso(i.last_seen),
                "started": iso(i.started_at),
                "library_version": i.library_version,
                "routing_algorithm": i.routing_algorithm,
                "routing_check": i.routing_check or "ok",
                "digests": list(i.digests),
                "via": i.via,
            }
            for i in view.instances
        ],
        "fleet": fleet_status(manager, view),
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
        "store": redact_url(store_url),
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
