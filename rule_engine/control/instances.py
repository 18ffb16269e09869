"""The fleet, as data: who serves what (one :class:`InstanceInfo` per process), and whether it converged.

Every manager that follows a shared store registers one instance row and refreshes it (see
:mod:`rule_engine.deployment.fleet`). These values are what the store keeps and what ``rule-engine
fleet`` shows; :func:`fleet_view` summarises them against the stored state (pure: the caller reads the
store and the clock once and passes both in).

Timing, in seconds (documented in docs/fleet.md):

- an instance writes its row when what it serves changes, and at least every ``HEARTBEAT_INTERVAL``;
- an instance not seen for ``EXPIRE_AFTER`` is *stale* ("no heartbeat for 12 s"): it still counts
  in the fleet (a rollout waits for it, up to its convergence deadline), and
- an instance not seen for ``FORGET_AFTER`` is dropped from the store (a host that was shut down).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rule_engine.control.records import ControlState

__all__ = [
    "EXPIRE_AFTER",
    "FORGET_AFTER",
    "HEARTBEAT_INTERVAL",
    "FleetView",
    "InstanceInfo",
    "Lagging",
    "expected_serving",
    "fleet_view",
]

HEARTBEAT_INTERVAL = 1.0
EXPIRE_AFTER = 10.0
FORGET_AFTER = 300.0


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One process serving from a store: what it runs and when it last said so."""

    instance_id: str
    host: str
    pid: int
    started_at: float
    library_version: str
    routing_algorithm: int
    routing_check: str | None  # None when the routing golden vectors pass here; else why not
    revision: int  # the store revision this instance serves
    stable: str | None
    candidate: str | None
    percent: float  # the candidate's share served here
    digests: tuple[str, ...]  # bundle digests of the versions served, in the order of `serving`
    last_seen: float
    stale: str | None = None  # the follower's stale reason, when it cannot read the store
    via: str | None = None  # the mirror this instance follows, when it follows one

    @property
    def serving(self) -> list[str]:
        """The version ids served here (stable, then candidate)."""
        return [v for v in (self.stable, self.candidate) if v is not None]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept by the stores."""
        return {
            "instance_id": self.instance_id,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "library_version": self.library_version,
            "routing_algorithm": self.routing_algorithm,
            "routing_check": self.routing_check,
            "revision": self.revision,
            "stable": self.stable,
            "candidate": self.candidate,
            "percent": self.percent,
            "digests": list(self.digests),
            "last_seen": self.last_seen,
            "stale": self.stale,
            "via": self.via,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstanceInfo:
        """Rebuild from :meth:`to_dict` (raises ``KeyError``/``TypeError``/``ValueError`` on a bad row)."""
        return cls(
            instance_id=str(data["instance_id"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            started_at=float(data["started_at"]),
            library_version=str(data["library_version"]),
            routing_algorithm=int(data["routing_algorithm"]),
            routing_check=_optional_text(data.get("routing_check")),
            revision=int(data["revision"]),
            stable=_optional_text(data.get("stable")),
            candidate=_optional_text(data.get("candidate")),
            percent=float(data["percent"]),
            digests=tuple(str(d) for d in data.get("digests", ())),
            last_seen=float(data["last_seen"]),
            stale=_optional_text(data.get("stale")),
            via=_optional_text(data.get("via")),
        )


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


def expected_serving(state: ControlState) -> tuple[str | None, str | None, float]:
    """What every instance should serve under ``state``: (stable, candidate, candidate percent)."""
    rollout = state.rollout
    if rollout is None:
        return state.active, None, 0.0
    return rollout.stable, rollout.candidate, rollout.share_bp / 100


@dataclass(frozen=True, slots=True)
class Lagging:
    """An instance that does not (yet) serve what the state says, and why."""

    instance: InstanceInfo
    reason: str
    age: float  # seconds since it was last seen

    @property
    def name(self) -> str:
        """``host/pid 4411``: how people name a process."""
        return f"{self.instance.host}/pid {self.instance.pid}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (in ``status --json``'s ``fleet.lagging``)."""
        return {
            "instance_id": self.instance.instance_id,
            "host": self.instance.host,
            "pid": self.instance.pid,
            "revision": self.instance.revision,
            "serving": self.instance.serving,
            "reason": self.reason,
            "last_seen_secs_ago": round(self.age, 3),
        }


@dataclass(frozen=True, slots=True)
class FleetView:
    """The fleet against the stored state: how many instances, and which do not serve it."""

    instances: tuple[InstanceInfo, ...]
    serving_revision: int
    lagging: tuple[Lagging, ...]  # not serving the expected versions, stale, or failing the routing check
    behind: int  # live instances serving the right versions at an older revision (harmless, counted)

    @property
    def converged(self) -> bool:
        """True when every known instance serves what the state says (vacuously true for no instance)."""
        return not self.lagging

    @property
    def waiting(self) -> str | None:
        """What a rollout step (a stage, an activation) waits for: "waiting for 3 of 32 instances"; None when converged."""
        return f"waiting for {len(self.lagging)} of {len(self.instances)} instances" if self.lagging else None

    def to_dict(self) -> dict[str, Any]:
        """``status --json``'s ``fleet``."""
        return {
            "instances": len(self.instances),
            "converged": self.converged,
            "serving_revision": self.serving_revision,
            "lagging": [lag.to_dict() for lag in self.lagging],
            "waiting": self.waiting,
        }

    def summary(self) -> str:
        """One line: "31 of 32 instances serve revision 57 (1 stale: host-b/pid 4411, last seen 12 s ago); waiting for 1 of 32 instances"."""
        total = len(self.instances)
        if total == 0:
            return "no instance has registered (no process follows this store)"
        good = total - len(self.lagging) - self.behind
        noun = "instance serves" if total == 1 else "instances serve"
        line = f"{good} of {total} {noun} revision {self.serving_revision}"
        details = []
        if self.behind:
            details.append(f"{self.behind} serving the same versions at an older revision")
        stale = [lag for lag in self.lagging if lag.reason.startswith("stale: ")]
        others = [lag for lag in self.lagging if not lag.reason.startswith("stale: ")]
        for kind, group in (("stale", stale), ("lagging", others)):
            if group:
                prefix = "stale: " if kind == "stale" else ""
                shown = "; ".join(f"{lag.name}, {lag.reason.removeprefix(prefix)}" for lag in group[:3])
                more = f"; and {len(group) - 3} more" if len(group) > 3 else ""
                details.append(f"{len(group)} {kind}: {shown}{more}")
        return line + (f" ({'; '.join(details)})" if details else "") + (f"; {self.waiting}" if self.waiting else "")


def fleet_view(
    instances: Iterable[InstanceInfo], state: ControlState, now: float, expire_after: float = EXPIRE_AFTER
) -> FleetView:
    """Compare every registered instance with ``state`` at ``now``.

    An instance lags when it was not seen for ``expire_after`` seconds, reports itself stale, fails
    the routing self-check or knows only older routing algorithms than the rollout's while a rollout
    is in progress, or serves other versions or another share.
    One serving the right versions at an older revision (a commit that changed nothing served) does not lag.
    """
    expected = expected_serving(state)
    known = tuple(sorted(instances, key=lambda i: (i.host, i.pid, i.instance_id)))
    lagging: list[Lagging] = []
    behind = 0
    for info in known:
        age = max(0.0, now - info.last_seen)
        algorithm = state.rollout.algorithm if state.rollout is not None else None
        reason = _lag_reason(info, expected, age, expire_after, algorithm=algorithm)
        if reason is not None:
            lagging.append(Lagging(info, reason, age))
        elif info.revision < state.revision:
            behind += 1
    return FleetView(known, state.revision, tuple(lagging), behind)


def _lag_reason(
    info: InstanceInfo,
    expected: tuple[str | None, str | None, float],
    age: float,
    expire_after: float,
    *,
    algorithm: int | None,
) -> str | None:
    """Why ``info`` lags (None: it serves what it should); ``algorithm``: the rollout's routing algorithm, if any."""
    if age >= expire_after:
        return f"stale: last seen {age:.0f} s ago"
    if info.stale is not None:
        return f"stale: {info.stale}"
    if algorithm is not None and info.routing_check is not None:
        return f"refuses the rollout: routing self-check failed ({info.routing_check})"
    if algorithm is not None and info.routing_algorithm < algorithm:  # an older library would route by another rule
        return (
            f"cannot route the rollout: it knows routing up to v{info.routing_algorithm}, the rollout uses v{algorithm}"
        )
    if (info.stable, info.candidate, round(info.percent, 2)) != (expected[0], expected[1], round(expected[2], 2)):
        served = ", ".join(info.serving) or "nothing"
        return f"serves {served} at revision {info.revision}"
    return None
