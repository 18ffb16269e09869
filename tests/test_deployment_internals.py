"""The deployment package's own promises: the tick reads the state once, a commit is final, hooks run once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rule_engine import Canary, ConflictError, DeploymentManager, HookPoint, Scheduled
from rule_engine.bundle.models import RuleBundle
from rule_engine.control.records import ControlState
from rule_engine.deployment.publisher import Publisher
from rule_engine.stores.memory import MemoryStore
from tests._support_deployment import mini_bundle

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


class FixedClock:
    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


class RacyPublisher(Publisher):
    """A publisher whose state is replaced (as a concurrent rollback would) right after its N-th read."""

    armed = 0

    @property  # type: ignore[override]
    def state(self) -> ControlState:
        value: ControlState = self.__dict__["_racy_state"]
        if self.armed:
            self.armed -= 1
            if not self.armed:
                self.__dict__["_racy_state"] = replace(value, rollout=None)
        return value

    @state.setter
    def state(self, value: ControlState) -> None:
        self.__dict__["_racy_state"] = value


@pytest.mark.parametrize("nth_read", [1, 2, 3, 4])
def test_tick_survives_a_rollback_published_between_its_reads(nth_read: int) -> None:
    """A rollback landing while tick() runs never fails the tick (on 2f11de2 it raised AttributeError)."""
    manager = DeploymentManager(clock=FixedClock(1_000.0))
    manager.activate_deployment(manager.prepare_deployment(BUNDLES / "gateway-v1.json"))
    manager.activate_deployment(manager.prepare_deployment(BUNDLES / "gateway-v2.json", Canary((10, 100), 300)))
    scheduled = manager.prepare_deployment(BUNDLES / "gateway-v1.json", Scheduled(900))
    publisher = manager._publisher
    state = publisher.state
    publisher.__class__ = RacyPublisher
    publisher.state = state
    publisher.armed = nth_read  # type: ignore[attr-defined]
    report = manager.tick()
    assert any(scheduled in line for line in report.holding + report.actions)


class FailingPublishStore(MemoryStore):
    """Commits, then fails every bundle read (as a store that went away right after the commit would)."""

    fail_reads = False

    def bundle_json(self, version_id: str) -> str | None:
        if self.fail_reads:
            from rule_engine import StoreError

            raise StoreError("store went away")
        return super().bundle_json(version_id)


def test_an_operation_that_committed_succeeds_even_if_publishing_fails() -> None:
    """D14: once the store has committed, the call returns success; what serves catches up later."""
    store = FailingPublishStore()
    manager = DeploymentManager(store=store)
    v1 = manager.prepare_deployment(BUNDLES / "gateway-v1.json")
    store.fail_reads = True
    manager.activate_deployment(v1)  # on 2f11de2 this raised StoreError although the activation committed
    assert store.load().active == v1
    store.fail_reads = False
    manager.refresh()
    assert manager.get_active_version_id() == v1


class ConflictOnceStore(MemoryStore):
    conflicts = 1

    def commit(self, *args: Any, **kwargs: Any) -> ControlState:
        if self.conflicts:
            self.conflicts -= 1
            raise ConflictError("another writer committed first")
        return super().commit(*args, **kwargs)


def test_before_swap_hooks_run_once_per_operation_even_when_the_commit_is_retried() -> None:
    """A conflict re-plans the operation without running before-swap hooks a second time."""
    store = ConflictOnceStore()
    manager = DeploymentManager(store=store)
    calls: list[str] = []
    manager.subscribe(HookPoint.BEFORE_SWAP, lambda event: calls.append(event.action))
    v1 = manager.prepare_deployment(BUNDLES / "gateway-v1.json")
    store.conflicts = 1
    manager.activate_deployment(v1)
    assert calls == ["activate"]
    assert manager.get_active_version_id() == v1


def test_the_constructor_does_no_io() -> None:
    """Building a manager on a store reads nothing from it; refresh() (or open()) loads it."""

    class CountingStore(MemoryStore):
        reads = 0

        def load(self) -> ControlState:
            self.reads += 1
            return super().load()

        def revision(self) -> int:
            self.reads += 1
            return super().revision()

    store = CountingStore()
    writer = DeploymentManager(store=store)
    writer.activate_deployment(writer.prepare_deployment(BUNDLES / "gateway-v1.json"))
    store.reads = 0
    reader = DeploymentManager(store=store)
    assert store.reads == 0
    assert reader.get_active_version_id() is None
    assert reader.refresh() is True
    assert reader.get_active_version_id() == writer.get_active_version_id()


def test_settings_are_one_immutable_value_changed_by_configure() -> None:
    """configure() derives a new validated config; the old value is unchanged and bad settings are refused."""
    manager = DeploymentManager(max_history=5)
    before = manager.config
    after = manager.configure(max_history=3, auto_rollback=True)
    assert (before.max_history, before.auto_rollback) == (5, False)
    assert (manager.config.max_history, manager.config.auto_rollback) == (3, True)
    assert after is manager.config
    with pytest.raises(ValueError, match="max_history"):
        manager.configure(max_history=0)
    with pytest.raises(TypeError, match="unknown setting"):
        manager.configure(max_histroy=3)
    assert manager.config is after


@pytest.mark.parametrize("when", [253_402_300_800, 1e20, float("inf"), -1])
def test_a_schedule_outside_what_can_be_rendered_is_refused_before_anything_is_stored(when: float) -> None:
    """D9: Scheduled refuses times after 9999 (or not finite, or before 1970); nothing is staged."""
    from rule_engine import InvalidStrategyError

    manager = DeploymentManager()
    with pytest.raises(InvalidStrategyError, match="between 1970 and 9999"):
        manager.prepare_deployment(BUNDLES / "gateway-v1.json", Scheduled(when))
    assert manager.get_deployment_history() == []


def test_rendering_a_time_never_raises() -> None:
    """D9: a stored time that ISO 8601 cannot render is shown as unix seconds, never an exception."""
    from rule_engine.clock import iso

    assert iso(0) == "1970-01-01T00:00:00+00:00"
    assert iso(1e20) == "1e+20 (unix seconds)"
    assert iso(float("nan")) == "nan (unix seconds)"


def test_adopting_another_process_change_before_an_operation_runs_the_follow_hooks(tmp_path: Path) -> None:
    """D29: a change another process committed, adopted by this one's next operation, still fires after_swap."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    writer = DeploymentManager.open(url, follow=False)
    reader = DeploymentManager.open(url, follow=False)
    try:
        seen: list[tuple[str, str | None]] = []
        reader.subscribe(HookPoint.AFTER_SWAP, lambda event: seen.append((event.action, event.serving_after[0])))
        v1 = writer.prepare_deployment(BUNDLES / "gateway-v1.json")
        writer.activate_deployment(v1)
        reader.prepare_deployment(BUNDLES / "gateway-v2.json")  # adopts the writer's activation first
        assert seen == [("follow", v1)]
    finally:
        writer.close()
        reader.close()


def test_a_bundle_of_another_policy_is_refused_unless_replacing_the_policy_is_meant() -> None:
    """D17: deploying fraud-screen over gateway-access is refused, naming both; replace_policy=True allows it."""
    from rule_engine import PolicyMismatchError

    manager = DeploymentManager()
    gateway = manager.prepare_deployment(BUNDLES / "gateway-v1.json")
    manager.activate_deployment(gateway)
    history = manager.get_deployment_history()
    with pytest.raises(PolicyMismatchError, match=r"'fraud-screen' is another policy.*'gateway-access'"):
        manager.prepare_deployment(BUNDLES / "fraud-screen.json")
    assert manager.get_deployment_history() == history
    fraud = manager.prepare_deployment(BUNDLES / "fraud-screen.json", replace_policy=True)
    manager.activate_deployment(fraud)
    assert manager.get_active_version_id() == fraud


def test_a_prepare_reusing_kept_tables_survives_a_publish_evicting_one_meanwhile() -> None:
    """prepare looks for a kept table outside the lock; a writer evicting tables meanwhile breaks nothing.

    CI once failed with "dictionary changed size during iteration": four threads preparing and
    rolling back at once. Here the eviction runs exactly while the lookup iterates.
    """
    manager = DeploymentManager()
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("1.0.0")))
    publisher: Publisher = manager._publisher
    evicted: list[bool] = []

    class EvictsWhenRead:
        """A kept table that no version keeps: reading its digest runs a publish, which evicts it."""

        @property
        def digest(self) -> str:
            publisher.publish(publisher.state)
            evicted.append("gone" not in publisher.compiled_versions())
            return "not-this-one"

    publisher._tables = {"gone": EvictsWhenRead(), **publisher._tables}  # type: ignore[dict-item]
    bundle = RuleBundle.model_validate(mini_bundle("1.0.0"))
    table = publisher.base_table(bundle)
    assert evicted == [True]
    assert table.digest == bundle.digest
    assert table.version_id is None
