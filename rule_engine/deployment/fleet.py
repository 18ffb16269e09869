"""Fleet truth: each following manager registers what it serves; a rollout step waits for the fleet.

**Registration.** A manager that follows a store (``DeploymentManager.open(...)`` with ``follow``)
writes one :class:`~rule_engine.control.instances.InstanceInfo` row on the follower thread: at its
first step, whenever what it serves (revision, versions, share) or its staleness changes, and at least
every ``heartbeat_interval`` seconds otherwise, so the write rate is bounded by about one row per
process per second. ``close()`` removes the row; a process that died stops refreshing it, shows as
stale after ``expire_after`` seconds, and is dropped after ``forget_after``. Write failures are not
raised into the loop (the follower reports the store's unavailability as its stale reason).

**Routing self-check.** When the manager is built, the instance checks routing algorithms v1 and v2
against golden vectors (:func:`routing_self_check`, copies of some of ``tests/cases/routing_v1.json``
and ``routing_v2.json``) and reports the result in its row. An instance that would bucket differently refuses candidates (it
serves all traffic on the stable version, ``Publisher.refuse_candidates``) and counts as lagging
during any rollout, so the rollout holds and says which process refuses it, rather than splitting
traffic inconsistently.

**Convergence gate.** Before the controller advances a canary it asks :meth:`Fleet.gate`: while a
registered instance does not serve the stage (or is stale), the stage holds with "waiting for 3 of
32 instances". The first time the fleet is seen serving the stage, the controller commits
``converged_at`` and restarts the stage clock there (:func:`plan_converged`): a stage lasts its
duration *on the whole fleet*. After ``deadline`` seconds (None: never) the laggards are named in the
hold reason, and with ``ignore_laggards`` the stage proceeds without them (noted in the audit). With
no instance registered (no process follows the store) the gate does not hold nor move the clock.

An activation outside a rollout (a blue-green switch, a scheduled activation, a completed canary) is
gated the same way: until the fleet serves the new active version the tick says "waiting for 3 of 32
instances to serve it", and the first tick that sees it served commits the version's
``converged_at`` (:func:`plan_active_converged`); its bake time (automatic rollback armed) runs
``bake_secs`` from then (``VersionRecord.bake_from``). The deadline counts from the activation, and
an activation is gated only up to it: past it the laggards are reported (and, with
``ignore_laggards``, the convergence recorded without them), but a fleet that converges or starts
later does not restart the version's bake time (it counts from the commit).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from rule_engine.clock import Clock
from rule_engine.control.instances import (
    EXPIRE_AFTER,
    FORGET_AFTER,
    HEARTBEAT_INTERVAL,
    FleetView,
    InstanceInfo,
    fleet_view,
)
from rule_engine.control.records import ControlState
from rule_engine.control.transitions import Change
from rule_engine.deployment.commit import Plan, nothing_to_do
from rule_engine.deployment.publisher import Publisher
from rule_engine.errors import RuleEngineError
from rule_engine.logs import get_logger
from rule_engine.serving.routing import ALGORITHM_VERSION, Salt, bucket_of, goes_to_candidate
from rule_engine.stores.base import StateStore

__all__ = ["Fleet", "FleetPolicy", "library_version", "plan_active_converged", "plan_converged", "routing_self_check"]

_log = get_logger()

# (key, salt, request hash, bucket): routing v1 golden vectors (tests/cases/routing_v1.json, never edited).
_GOLDEN = (
    ("user-1", "gateway-access@1.0.0+0123abcd.1", 4171401059, 578),
    ("user-2", "gateway-access@2.0.0+89abcdef.2", 3734456267, 4407),
    ("user-42", "fraud-screen@3.1.4+deadbeef.7", 3111312080, 5265),
    ("alice", "", 1280413405, 856),
    ("bob", "salt", 2824567794, 6364),
    ("u-1001", "rollout-\u03b1", 2947969699, 5616),
)
# (key, salt, request hash under the salt's seed, bucket): routing v2 (tests/cases/routing_v2.json, never edited).
_GOLDEN_V2 = (
    ("user-1", "", 3752057193, 8735),
    ("user-2", "fraud-screen@3.1.4+deadbeef.7", 330140637, 768),
    ("user-42", "gateway-access@1.0.0+0123abcd.1", 3737801443, 8702),
    ("alice", "gateway-access@2.0.0+89abcdef.2", 1072213867, 2496),
    ("bob", "rollout-\u03b1", 69715404, 162),
    ("u-1001", "salt", 2707678262, 6304),
)


def routing_self_check(
    vectors: tuple[tuple[str, str, int, int], ...] = _GOLDEN,
    vectors_v2: tuple[tuple[str, str, int, int], ...] = _GOLDEN_V2,
) -> str | None:
    """None when this process routes as algorithms v1 and v2 specify; else what differs (first mismatch)."""
    for algorithm, golden in ((1, vectors), (2, vectors_v2)):
        for key, salt_text, request_hash, bucket in golden:
            salt = Salt.from_text(salt_text, algorithm)
            found_hash = salt.request_hash(key)
            if found_hash != request_hash:
                return f"murmur3 of {key!r} (v{algorithm}) is {found_hash}, expected {request_hash}"
            found = bucket_of(request_hash, salt)
            if found != bucket:
                return f"bucket of {key!r} under salt {salt_text!r} (v{algorithm}) is {found}, expected {bucket}"
            share = bucket + 1  # the key is in at bucket + 1 basis points and out at bucket
            if not _in_share(salt, share, request_hash) or _in_share(salt, bucket, request_hash):
                return f"the fast share test disagrees with bucket {bucket} for {key!r} (v{algorithm})"
    return None


def _in_share(salt: Salt, share_bp: int, request_hash: int) -> bool:
    """The engine's comparison (serving/engine.py): v1 mixes the hash first, v2 compares it as it is."""
    if salt.algorithm == 1:
        return goes_to_candidate(salt.multiplier, salt.offset, salt.limit(share_bp), request_hash)
    return request_hash < salt.limit(share_bp)


def library_version() -> str:
    """The installed rule_engine version (``unknown`` when not installed as a distribution)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rule_engine")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


@dataclass(frozen=True, slots=True)
class FleetPolicy:
    """How instances report and how long a rollout waits for them (seconds)."""

    heartbeat_interval: float = HEARTBEAT_INTERVAL
    expire_after: float = EXPIRE_AFTER
    forget_after: float = FORGET_AFTER
    deadline: float | None = 300.0  # after this long in a stage, the laggards are reported
    ignore_laggards: bool = False  # ... and, if True, the stage goes on without them
    via: str | None = None  # the mirror this process follows (shown in `rule-engine fleet`)


class Fleet:
    """This process's fleet row, and the convergence gate the controller consults."""

    def __init__(
        self,
        store: StateStore,
        publisher: Publisher,
        clock: Clock,
        stale_reason: Callable[[], str | None],
        policy: FleetPolicy | None = None,
    ) -> None:
        self.policy = policy or FleetPolicy()
        self.instance_id = uuid.uuid4().hex
        self._store = store
        self._publisher = publisher
        self._clock = clock
        self._stale_reason = stale_reason
        self._routing_check = routing_self_check()  # pure computation, before anything is published
        if self._routing_check is not None:
            publisher.refuse_candidates = f"routing self-check failed: {self._routing_check}"
        self._started_at: float | None = None  # set when this instance joins (its first heartbeat)
        self._written: tuple[object, ...] | None = None  # what the last row said (minus the time)
        self._written_at = 0.0
        self._laggards_logged: set[tuple[str, int]] = set()
        self._identity: tuple[str, int, str] | None = None  # host, pid, library version (read once)

    # --- registration ---------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        """Whether this instance has registered."""
        return self._started_at is not None

    def info(self, now: float) -> InstanceInfo:
        """This instance's row as of ``now``."""
        state, (stable, candidate, percent) = self._publisher.state, self._publisher.serving()
        digests = tuple(state.versions[v].digest for v in (stable, candidate) if v is not None and v in state.versions)
        if self._identity is None:
            self._identity = (socket.gethostname(), os.getpid(), library_version())
        host, pid, version = self._identity
        return InstanceInfo(
            instance_id=self.instance_id,
            host=host,
            pid=pid,
            started_at=self._started_at if self._started_at is not None else now,
            library_version=version,
            routing_algorithm=ALGORITHM_VERSION,
            routing_check=self._routing_check,
            revision=state.revision,
            stable=stable,
            candidate=candidate,
            percent=percent,
            digests=digests,
            last_seen=now,
            stale=self._stale_reason(),
            via=self.policy.via,
        )

    def beat(self) -> bool:
        """Write this instance's row if it changed or the heartbeat is due; True when written."""
        now = self._clock.now()
        if self._started_at is None and self._routing_check is not None:
            _log.error("fleet.routing_check_failed", instance_id=self.instance_id, reason=self._routing_check)
        info = self.info(now)
        said = (info.revision, info.stable, info.candidate, info.percent, info.stale)
        if said == self._written and now - self._written_at < self.policy.heartbeat_interval:
            return False
        try:
            self._store.heartbeat(info)
            if self._started_at is None or now - self._written_at >= self.policy.forget_after / 10:
                self._store.forget_instances(now - self.policy.forget_after)
        except (RuleEngineError, OSError, ValueError) as exc:
            _log.debug("fleet.heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        if self._started_at is None:
            self._started_at = now
            _log.info("fleet.joined", instance_id=self.instance_id, host=info.host, pid=info.pid)
        self._written, self._written_at = said, now
        return True

    def beating(self, step: Callable[[], None]) -> Callable[[], None]:
        """``step`` followed by :meth:`beat` (the follower's background step)."""

        def both() -> None:
            step()
            self.beat()

        return both

    def leave(self) -> None:
        """Remove this instance's row (a clean shutdown); failures are ignored (the row expires)."""
        if self._started_at is None:
            return
        try:
            self._store.forget_instance(self.instance_id)
        except (RuleEngineError, OSError, ValueError):
            return
        self._started_at = None
        _log.info("fleet.left", instance_id=self.instance_id)

    # --- reading the fleet and the gate ---------------------------------------------------------

    def view(self, state: ControlState | None = None, now: float | None = None) -> FleetView:
        """The fleet against ``state`` (default: the published one) at ``now``."""
        state = self._publisher.state if state is None else state
        now = self._clock.now() if now is None else now
        return fleet_view(self._store.instances(), state, now, self.policy.expire_after)

    def gate(self, state: ControlState, now: float) -> tuple[str | None, Plan | None]:
        """Whether the current rollout step may count: (hold reason or None, plan to commit or None).

        The step is the rollout's stage, or, with no rollout, the active version's activation (a
        blue-green switch, a scheduled activation, a completed canary): its bake time counts from
        the fleet's convergence. The plan, when given, records that the fleet converged on the step
        (restarting a stage's clock; starting the active version's bake time).
        """
        step = _pending_step(state)
        if step is None:
            return None, None
        version_id, stage_index, since = step
        try:
            view = self.view(state, now)
        except (RuleEngineError, OSError, ValueError) as exc:
            return f"cannot read the fleet: {type(exc).__name__}: {exc}", None
        if not view.instances:
            return None, None

        def plan_of(ignored: list[str] | tuple[str, ...]) -> Plan:
            if stage_index is None:
                return plan_active_converged(version_id, len(view.instances), ignored)
            return plan_converged(version_id, stage_index, len(view.instances), ignored)

        deadline = self.policy.deadline
        within = deadline is None or now - since < deadline
        if view.converged:
            # An activation is gated up to the deadline only: a fleet that converges (or starts) later
            # does not restart a settled version's bake time.
            return None, (plan_of(()) if within or stage_index is not None else None)
        what = "this stage" if stage_index is not None else "it (its bake time counts from then)"
        waiting = f"waiting for {len(view.lagging)} of {len(view.instances)} instances to serve {what}"
        if within:
            return f"{waiting} ({view.lagging[0].name}: {view.lagging[0].reason})", None
        names = [f"{lag.name} ({lag.reason})" for lag in view.lagging]
        key = (version_id, -1 if stage_index is None else stage_index)
        if key not in self._laggards_logged:
            self._laggards_logged.add(key)
            stage = None if stage_index is None else stage_index + 1
            _log.warning("fleet.laggards", version_id=version_id, stage=stage, lagging=names)
        if self.policy.ignore_laggards:
            return None, plan_of(names)
        return f"{waiting}; deadline of {deadline:g} s passed, lagging: {', '.join(names[:5])}", None


def _pending_step(state: ControlState) -> tuple[str, int | None, float] | None:
    """(version, stage index or None for an activation, since when) of a step the fleet has not converged on."""
    rollout = state.rollout
    if rollout is not None:
        if rollout.converged_stage == rollout.stage_index:
            return None
        return rollout.candidate, rollout.stage_index, rollout.stage_started_at
    record = state.versions.get(state.active) if state.active is not None else None
    if record is None or record.activated_at is None:
        return None
    if record.converged_at is not None and record.converged_at >= record.activated_at:
        return None  # the fleet's convergence on this activation is recorded
    return record.version_id, None, record.activated_at


def plan_converged(candidate: str, stage_index: int, instances: int, ignored: list[str] | tuple[str, ...]) -> Plan:
    """Record that the fleet serves the stage: ``converged_at = now`` and the stage clock restarted."""

    def plan(state: ControlState, now: float) -> Change:
        rollout = state.rollout
        if rollout is None or rollout.candidate != candidate or rollout.stage_index != stage_index:
            return nothing_to_do(state)
        if rollout.converged_stage == stage_index:
            return nothing_to_do(state)  # another process recorded it first
        change = Change(state, "converge", "controller")
        without = f", ignoring {len(ignored)} past the deadline: {', '.join(ignored[:5])}" if ignored else ""
        change.note(
            state.versions[candidate], now, f"fleet of {instances} instances serves stage {stage_index + 1}{without}"
        )
        change.put(rollout=replace(rollout, converged_at=now, converged_stage=stage_index, stage_started_at=now))
        change.event(
            "rollout.converged", version_id=candidate, stage=stage_index + 1, instances=instances, ignored=len(ignored)
        )
        return change

    return plan


def plan_active_converged(version_id: str, instances: int, ignored: list[str] | tuple[str, ...]) -> Plan:
    """Record that the fleet serves the active ``version_id``: ``converged_at = now``, its bake time starts."""

    def plan(state: ControlState, now: float) -> Change:
        record = state.versions.get(version_id)
        if state.rollout is not None or state.active != version_id or record is None or record.activated_at is None:
            return nothing_to_do(state)
        if record.converged_at is not None and record.converged_at >= record.activated_at:
            return nothing_to_do(state)  # another process recorded it first
        change = Change(state, "converge", "controller")
        without = f", ignoring {len(ignored)} past the deadline: {', '.join(ignored[:5])}" if ignored else ""
        change.note(record, now, f"fleet of {instances} instances serves it; its bake time counts from now{without}")
        change.put(replace(record, converged_at=now))
        change.event("version.converged", version_id=version_id, instances=instances, ignored=len(ignored))
        return change

    return plan
