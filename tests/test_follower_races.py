"""A manager reading a store while other processes change it: outdated reads are read again."""

from __future__ import annotations

from pathlib import Path

from rule_engine import DeploymentManager
from rule_engine.control.records import ControlState
from rule_engine.stores.memory import MemoryStore

BUNDLES = Path(__file__).parent.parent / "bundles"


class StaleOnceStore(MemoryStore):
    """Answers the first load() with an older state, as if another process committed right after it."""

    def __init__(self) -> None:
        super().__init__()
        self.stale: ControlState | None = None

    def load(self) -> ControlState:
        stale, self.stale = self.stale, None
        return stale if stale is not None else super().load()


def _history_that_evicts_v1(store: StaleOnceStore) -> tuple[ControlState, str]:
    writer = DeploymentManager(max_history=1, store=store)
    v1 = writer.prepare_deployment(BUNDLES / "gateway-v1.json")
    writer.activate_deployment(v1)
    when_v1_served = store.load()
    for bundle in ("gateway-v2.json", "fraud-screen.json"):
        version = writer.prepare_deployment(BUNDLES / bundle, replace_policy=True)
        writer.activate_deployment(version)
    assert v1 not in writer.get_deployment_history()  # evicted: its bundle is gone from the store
    assert store.bundle_json(v1) is None
    return when_v1_served, version


def test_opening_on_a_state_whose_bundle_was_just_evicted_reads_again() -> None:
    """A state read just before another process evicted its bundle is re-read, not reported as corrupt."""
    store = StaleOnceStore()
    outdated, latest = _history_that_evicts_v1(store)
    store.stale = outdated
    reader = DeploymentManager(store=store)
    reader.refresh()  # the constructor does no I/O: loading is explicit (open() does it)
    assert reader.get_active_version_id() == latest


def test_following_past_an_eviction_reads_again() -> None:
    """A follower that reads an outdated state while catching up serves the latest one and is not stale."""
    store = StaleOnceStore()
    follower = DeploymentManager(store=store)
    outdated, latest = _history_that_evicts_v1(store)
    store.stale = outdated
    assert follower.refresh() is True
    assert follower.get_active_version_id() == latest
    assert follower.stale is None
