"""The control plane's state as immutable values, and their JSON form for stores.

:class:`ControlState` is everything a manager needs to rebuild what serves: the versions (without
their bundle text, which stores keep apart), the active version, the rollout in progress, and the
lineage of formerly active versions that rollback walks back through. Operations never mutate it:
they derive a new one (``dataclasses.replace``) and the store commits it against the revision it
was derived from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from rule_engine.clock import iso
from rule_engine.control.shadowing import SHADOW
from rule_engine.control.states import DeploymentState
from rule_engine.control.strategies import Strategy, rollout_kinds, strategy_class, strategy_from_dict, strategy_kinds
from rule_engine.serving.routing import ALGORITHMS

__all__ = ["AuditEntry", "ControlState", "GateHold", "Rollout", "VersionRecord"]

MAX_GATE_HOLD_REASON = 300  # the first 300 characters of a gate's reply are kept (docs/operations.md)

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One prepared version: identity, strategy, state and timestamps."""

    version_id: str
    seq: int
    bundle_id: str
    bundle_version: str
    digest: str
    deployed_by: str
    strategy: Strategy
    state: DeploymentState
    created_at: float
    updated_at: float
    activated_at: float | None = None
    finished_at: float | None = None
    failure_reason: str | None = None
    # Per-deployment health analysis (HealthThresholds.to_dict()), stored so every controller
    # process judges this version alike; None: each manager's own thresholds.
    analysis: Mapping[str, Any] | None = None
    held: str | None = None  # a due schedule the controller holds (D16), and why
    last_rollout: Rollout | None = None  # the aborted rollout ``retry`` restarts (its salt, its deadline)
    reinstated: bool = False  # made active again by ``undo``: never rolled back automatically while it bakes
    # The signature verified when the version was prepared (alg, key_id, digest, signature, signer:
    # see control/signatures.py); every process re-verifies it on load when the store requires it.
    signature: Mapping[str, str] | None = None
    converged_at: float | None = None  # when the whole fleet was first seen serving it as the active version

    @property
    def bake_from(self) -> float | None:
        """When its bake time starts: when the fleet was first seen serving it, else its activation."""
        converged, activated = self.converged_at, self.activated_at
        return converged if converged is not None and activated is not None and converged >= activated else activated

    def moved(self, state: DeploymentState, now: float, **changes: Any) -> VersionRecord:
        """This record in ``state`` at ``now``."""
        return replace(self, state=state, updated_at=now, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "version_id": self.version_id,
            "seq": self.seq,
            "bundle_id": self.bundle_id,
            "bundle_version": self.bundle_version,
            "digest": self.digest,
            "deployed_by": self.deployed_by,
            "strategy": self.strategy.to_dict(),
            "state": self.state.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "activated_at": self.activated_at,
            "finished_at": self.finished_at,
            "failure_reason": self.failure_reason,
            **({"analysis": dict(self.analysis)} if self.analysis is not None else {}),
            "held": self.held,
            "last_rollout": self.last_rollout.to_dict() if self.last_rollout is not None else None,
            **({"reinstated": True} if self.reinstated else {}),
            **({"signature": dict(self.signature)} if self.signature is not None else {}),
            **({"converged_at": self.converged_at} if self.converged_at is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionRecord:
        """Rebuild from :meth:`to_dict`."""
        return cls(
            version_id=data["version_id"],
            seq=int(data["seq"]),
            bundle_id=data["bundle_id"],
            bundle_version=data["bundle_version"],
            digest=data["digest"],
            deployed_by=data["deployed_by"],
            strategy=strategy_from_dict(dict(data["strategy"])),
            state=DeploymentState(data["state"]),
            created_at=float(data["created_at"]),
            updated_at=float(data["updated_at"]),
            activated_at=data.get("activated_at"),
            finished_at=data.get("finished_at"),
            failure_reason=data.get("failure_reason"),
            analysis=dict(data["analysis"]) if data.get("analysis") is not None else None,
            held=data.get("held"),
            last_rollout=Rollout.from_dict(data["last_rollout"]) if data.get("last_rollout") else None,
            reinstated=data.get("reinstated") is True,
            signature=_text_mapping(data.get("signature")),
            converged_at=data.get("converged_at"),
        )


@dataclass(frozen=True, slots=True)
class GateHold:
    """A gate holds the step of the rollout's stage ``stage_index`` (0-based) because of ``reason``.

    Stored with the rollout so every process (``status``, a dashboard without a controller) sees it;
    a hold naming another stage than the rollout's is stale and ignored (control/gate_holds.py).
    """

    stage_index: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"stage_index": self.stage_index, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Any) -> GateHold:
        """Rebuild from :meth:`to_dict`; a damaged hold is refused (``ValueError``)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a rollout's gate hold must be an object, got {type(data).__name__}")
        stage, reason = data.get("stage_index"), data.get("reason")
        if not isinstance(stage, int) or isinstance(stage, bool) or stage < 0:
            raise ValueError(f"a gate hold's stage_index must be a whole number >= 0, got {stage!r}")
        if not isinstance(reason, str):
            raise ValueError(f"a gate hold's reason must be text, got {type(reason).__name__}")
        return cls(stage, reason[:MAX_GATE_HOLD_REASON])


@dataclass(frozen=True, slots=True)
class Rollout:
    """A canary or A/B test in progress: who is candidate, against which stable, at what share.

    ``kind`` is the candidate's strategy kind, one of :func:`~rule_engine.control.strategies.rollout_kinds`
    (or ``blue-green`` in a shadow phase). ``phase`` is ``"shadow"`` while the candidate only runs in
    the shadow of the stable version (``share_bp`` 0; control/shadowing.py), else None.
    """

    kind: str
    candidate: str
    stable: str
    share_bp: int
    stage_index: int
    started_at: float
    stage_started_at: float
    salt: str
    algorithm: int = 1
    ended_at: float | None = None  # an A/B test whose duration has passed, awaiting its winner
    held: str | None = None  # manual mode: found unhealthy; the controller will not advance it
    paused_at: float | None = None  # paused by a person: the stage clock stands still from then
    progress_deadline_secs: float | None = None  # a stage with no verdict for this long holds (or aborts)
    progress_deadline_abort: bool = False
    deadline_exceeded_at: float | None = None  # when the current stage passed its progress deadline
    converged_at: float | None = None  # when the fleet was first seen serving stage `converged_stage`
    converged_stage: int | None = None  # (the stage clock restarts then; see deployment/fleet.py)
    # Pinned keys (key -> the stable's or the candidate's version id; control/targeting.py): they
    # live and end with the rollout. Empty: none (and left out of the JSON form).
    pins: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    phase: str | None = None  # "shadow": the shadow phase before the first stage (left out of the JSON when None)
    gate_hold: GateHold | None = None  # a gate holds this stage's step (left out of the JSON when None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "kind": self.kind,
            "candidate": self.candidate,
            "stable": self.stable,
            "share_bp": self.share_bp,
            "stage_index": self.stage_index,
            "started_at": self.started_at,
            "stage_started_at": self.stage_started_at,
            "salt": self.salt,
            "algorithm": self.algorithm,
            "ended_at": self.ended_at,
            "held": self.held,
            "paused_at": self.paused_at,
            "progress_deadline_secs": self.progress_deadline_secs,
            "progress_deadline_abort": self.progress_deadline_abort,
            "deadline_exceeded_at": self.deadline_exceeded_at,
            **(
                {"converged_at": self.converged_at, "converged_stage": self.converged_stage}
                if self.converged_stage is not None
                else {}
            ),
            **({"pins": dict(self.pins)} if self.pins else {}),
            **({"phase": self.phase} if self.phase is not None else {}),
            **({"gate_hold": self.gate_hold.to_dict()} if self.gate_hold is not None else {}),
        }

    @property
    def finishes_by_itself(self) -> bool:
        """True for a rollout that ends on its own (a canary); False for one a person ends (an A/B test)."""
        return strategy_class(self.kind).finishes_by_itself

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        """Rebuild from :meth:`to_dict`."""
        kind, phase = data["kind"], data.get("phase")
        if phase not in (None, SHADOW):
            raise ValueError(f"unknown rollout phase {phase!r}")
        if kind not in rollout_kinds() and not (phase == SHADOW and kind in strategy_kinds()):
            raise ValueError(f"unknown rollout kind {kind!r}")
        algorithm = int(data.get("algorithm", 1))  # stored before versions were: 1 (docs/routing.md)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown routing algorithm {algorithm!r} (known: {ALGORITHMS})")
        return cls(
            kind=kind,
            candidate=data["candidate"],
            stable=data["stable"],
            share_bp=int(data["share_bp"]),
            stage_index=int(data["stage_index"]),
            started_at=float(data["started_at"]),
            stage_started_at=float(data["stage_started_at"]),
            salt=data["salt"],
            algorithm=algorithm,
            ended_at=data.get("ended_at"),
            held=data.get("held"),
            paused_at=_optional_float(data.get("paused_at")),
            progress_deadline_secs=_optional_float(data.get("progress_deadline_secs")),
            progress_deadline_abort=bool(data.get("progress_deadline_abort", False)),
            deadline_exceeded_at=_optional_float(data.get("deadline_exceeded_at")),
            converged_at=data.get("converged_at"),
            converged_stage=data.get("converged_stage"),
            pins=MappingProxyType({str(k): str(v) for k, v in dict(data.get("pins") or {}).items()}),
            phase=phase,
            gate_hold=GateHold.from_dict(data["gate_hold"]) if data.get("gate_hold") is not None else None,
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _flag(value: Any) -> bool:
    """A stored true/false; anything else is refused (a damaged flag must not read as "not required")."""
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {type(value).__name__}")
    return value


def _text_mapping(value: Any) -> Mapping[str, str] | None:
    """A stored mapping of text to text (None stays None); anything else is refused as a damaged state."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("a version's signature must map text to text")
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class ControlState:
    """The whole deployment state at one revision."""

    revision: int = 0
    next_seq: int = 1
    versions: Mapping[str, VersionRecord] = field(default_factory=lambda: MappingProxyType({}))
    active: str | None = None
    rollout: Rollout | None = None
    lineage: tuple[str, ...] = ()  # formerly active versions, oldest first; the last is `active`
    last_rollback_at: float | None = None  # when traffic was last taken from a version (a rollback or abort)
    # Every process verifies each version's recorded signature when it loads the bundle (D25); set
    # and cleared only by the audited ``trust`` operation (control/signatures.py).
    require_signatures: bool = False

    def with_versions(self, *records: VersionRecord, drop: tuple[str, ...] = ()) -> dict[str, VersionRecord]:
        """The versions mapping with ``records`` put in and ``drop`` taken out (seq order kept)."""
        versions = {k: v for k, v in self.versions.items() if k not in drop}
        for record in records:
            versions[record.version_id] = record
        return dict(sorted(versions.items(), key=lambda item: item[1].seq))

    @property
    def rollback_target(self) -> str | None:
        """The version a rollback of the active version returns to (None if there is none)."""
        return self.lineage[-2] if len(self.lineage) >= 2 else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (without bundles)."""
        return {
            "schema": SCHEMA_VERSION,
            "revision": self.revision,
            "next_seq": self.next_seq,
            "versions": [v.to_dict() for v in self.versions.values()],
            "active": self.active,
            "rollout": self.rollout.to_dict() if self.rollout else None,
            "lineage": list(self.lineage),
            **({"last_rollback_at": self.last_rollback_at} if self.last_rollback_at is not None else {}),
            **({"require_signatures": True} if self.require_signatures else {}),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], record: Callable[[Any], VersionRecord] = VersionRecord.from_dict
    ) -> ControlState:
        """Rebuild from :meth:`to_dict`; ``record`` decodes each version (a decoder may reuse unchanged ones)."""
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"unsupported state schema {data.get('schema')!r} (expected {SCHEMA_VERSION})")
        versions = [record(v) for v in data["versions"]]
        return cls(
            revision=int(data["revision"]),
            next_seq=int(data["next_seq"]),
            versions=MappingProxyType({v.version_id: v for v in sorted(versions, key=lambda v: v.seq)}),
            active=data.get("active"),
            rollout=Rollout.from_dict(data["rollout"]) if data.get("rollout") else None,
            lineage=tuple(data.get("lineage", ())),
            last_rollback_at=float(data["last_rollback_at"]) if data.get("last_rollback_at") is not None else None,
            require_signatures=_flag(data.get("require_signatures", False)),
        )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One transition in the append-only audit trail."""

    at: float
    action: str
    version_id: str
    from_state: str | None
    to_state: str
    actor: str
    reason: str = ""
    strategy: str | None = None
    seq: int | None = None  # assigned by the store
    origin: str | None = None  # the OS account and host that ran the operation (``user@host``), next to ``actor``

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "seq": self.seq,
            "at": self.at,
            "time": iso(self.at),
            "action": self.action,
            "version_id": self.version_id,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "actor": self.actor,
            "reason": self.reason,
            "strategy": self.strategy,
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEntry:
        """Rebuild from :meth:`to_dict`."""
        return cls(
            at=float(data["at"]),
            action=data["action"],
            version_id=data["version_id"],
            from_state=data.get("from_state"),
            to_state=data["to_state"],
            actor=data["actor"],
            reason=data.get("reason", ""),
            strategy=data.get("strategy"),
            seq=data.get("seq"),
            origin=data.get("origin"),
        )
