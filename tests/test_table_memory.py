"""What a served table keeps alive (issue 14): no bundle models, and only the versions that can serve stay compiled."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from rule_engine import DeploymentManager, RuleTable, parse_bundle
from rule_engine.bundle.models import RuleBundle
from rule_engine.deployment.publisher import kept_compiled
from rule_engine.evaluation.table import BundleSource
from tests._support_deployment import START, mini_bundle


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen


def _compiled(manager: DeploymentManager) -> set[str]:
    return set(manager._publisher.compiled_versions())


def test_a_table_built_with_a_loader_keeps_no_bundle_model() -> None:
    """A table given ``load`` frees the bundle it was compiled from; ``bundle`` and ``rule`` load it again."""
    bundle = parse_bundle(json.dumps(mini_bundle()))
    text, loads = bundle.canonical, []

    def load() -> RuleBundle:
        loads.append(1)
        return parse_bundle(text)

    table = RuleTable.from_bundle(bundle, version_id="v1", load=load)
    ref = weakref.ref(bundle)
    del bundle
    gc.collect()
    assert ref() is None
    assert table.evaluate({"x": 1}).decision == "deny"
    assert table.bundle.digest == table.digest
    held = table.bundle
    count = len(loads)
    assert table.rules[0].rule is held.rules[0]
    assert len(loads) == count  # reused while a caller holds it
    assert table.restamped("v2").bundle is held


def test_a_table_built_from_a_bundle_alone_holds_it() -> None:
    """Without a loader the table holds its bundle (a table compiled outside a manager)."""
    bundle = parse_bundle(json.dumps(mini_bundle()))
    table = RuleTable.from_bundle(bundle)
    assert table.bundle is bundle
    assert table.source.holds
    assert table.rules[0].rule is bundle.rules[0]
    with pytest.raises(ValueError, match="needs a bundle or a loader"):
        BundleSource()


def test_only_serving_rollback_and_newest_staged_versions_stay_compiled(clock: FrozenDateTimeFactory) -> None:
    """With ten versions in history at most the active, the rollback target and the newest staged one are compiled."""
    manager = DeploymentManager(max_history=10)
    ids = []
    for n in range(1, 9):
        ids.append(manager.prepare_deployment(mini_bundle(f"{n}.0.0")))
        manager.activate_deployment(ids[-1])
    staged = [manager.prepare_deployment(mini_bundle(f"9.{n}.0")) for n in range(2)]
    assert len(manager.get_deployment_history()) == 10
    assert _compiled(manager) == {ids[-1], ids[-2], staged[-1]}
    assert _compiled(manager) == set(kept_compiled(manager._publisher.state))


def test_a_version_not_kept_compiled_serves_again_from_the_store(clock: FrozenDateTimeFactory) -> None:
    """Activating an older staged version, or rolling back twice, compiles it from the store and serves it."""
    manager = DeploymentManager(max_history=10)
    first = manager.prepare_deployment(mini_bundle("1.0.0", expect="deny"))
    older = manager.prepare_deployment(mini_bundle("2.0.0"))
    newer = manager.prepare_deployment(mini_bundle("3.0.0"))
    assert older not in _compiled(manager)
    manager.activate_deployment(older)
    assert manager.get_active_version_id() == older
    table = manager.get_active_table()
    assert table is not None
    assert table.evaluate({"x": 1}).decision == "deny"
    for version in (first, newer):
        manager.activate_deployment(version)
    assert older not in _compiled(manager)  # superseded twice: neither serving nor the rollback target
    manager.rollback()
    assert manager.get_active_version_id() == first
    manager.rollback()
    assert manager.get_active_version_id() == older
    table = manager.get_active_table()
    assert table is not None
    assert (table.version_id, table.evaluate({"x": 1}).decision) == (older, "deny")
    assert manager.bundle_of(older).version == "2.0.0"


def _table_refs(manager: DeploymentManager) -> list[Any]:
    return [weakref.ref(t) for t in manager._publisher._tables.values()]


def test_tables_dropped_from_the_compiled_set_are_freed(clock: FrozenDateTimeFactory) -> None:
    """A version that is neither serving nor next loses its table: nothing else keeps it alive."""
    manager = DeploymentManager(max_history=10)
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("1.0.0")))
    refs = _table_refs(manager)
    for n in range(2, 5):
        manager.activate_deployment(manager.prepare_deployment(mini_bundle(f"{n}.0.0")))
    gc.collect()
    assert [r() for r in refs] == [None]
