"""The state store contract as a reusable pytest base class (model: LaunchDarkly's ``feature_store_test_base``).

A backend's test module subclasses :class:`StoreContractTests` and provides one fixture, ``make_store``,
returning a new, empty store of that backend; the suite closes it after each test::

    import pytest
    from rule_engine.testing.store_contract import StoreContractTests

    class TestMyStore(StoreContractTests):
        @pytest.fixture
        def make_store(self, tmp_path):
            return MyStore(tmp_path / "state")

Every test is a plain pytest method taking the ``store`` fixture, so a subclass may add its own
backend-specific tests next to the inherited ones, and the contract grows by adding methods here.
Needs pytest (the ``test`` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from rule_engine.control.instances import InstanceInfo
from rule_engine.control.records import ControlState
from rule_engine.control.states import DeploymentState
from rule_engine.errors import AmbiguousDeploymentError, ConflictError, StoreURLError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.base import StateStore
from rule_engine.testing.builders import audit_entry, control_state, version_record

__all__ = ["StoreContractTests"]


class StoreContractTests:
    """What every :class:`~rule_engine.stores.base.StateStore` backend must do (see ``docs/stores.md``).

    Not collected by itself (its name does not start with ``Test``); subclasses are. A subclass must
    provide the ``make_store`` fixture.
    """

    @pytest.fixture
    def make_store(self) -> StateStore:
        """A new, empty store of the backend under test: every subclass overrides this fixture.

        The base one fails the test that asked for it, so a backend that forgets it fails every
        contract test instead of passing none of them vacuously.
        """
        pytest.fail(f"{type(self).__name__} must provide a make_store fixture")

    @pytest.fixture
    def store(self, make_store: StateStore) -> Iterator[StateStore]:
        """The store under test, closed after the test."""
        yield make_store
        make_store.close()

    def test_new_store_is_empty_at_revision_zero(self, store: StateStore) -> None:
        """A new store loads an empty state at revision 0, with no bundles, audit or health."""
        assert store.load() == ControlState()
        assert store.revision() == 0
        assert store.bundle_json("x") is None
        assert store.audit_log() == []
        assert store.health(["x"]) == {"x": HealthCounts()}

    def test_commit_bumps_revision_and_load_returns_it(self, store: StateStore) -> None:
        """A commit writes the state as the next revision; load and revision see it."""
        state = control_state(version_record("v1", 1, DeploymentState.ACTIVE), active="v1")
        committed = store.commit(0, state, bundles={"v1": '{"a":1}'}, audit=[audit_entry("v1")])
        assert committed.revision == 1
        assert store.revision() == 1
        assert store.load() == replace(state, revision=1)
        assert store.bundle_json("v1") == '{"a":1}'

    def test_stale_revision_conflicts_and_writes_nothing(self, store: StateStore) -> None:
        """A commit against a stale revision raises ConflictError and leaves state, bundles and audit untouched."""
        first = store.commit(0, control_state(version_record("v1", 1)), bundles={"v1": "{}"}, audit=[audit_entry("v1")])
        with pytest.raises(ConflictError, match="expected revision 0, found 1"):
            store.commit(
                0,
                control_state(version_record("v2", 1)),
                bundles={"v2": "{}"},
                audit=[audit_entry("v2")],
                evicted=["v1"],
            )
        assert store.load() == first
        assert store.bundle_json("v2") is None
        assert store.bundle_json("v1") == "{}"
        assert [e.version_id for e in store.audit_log()] == ["v1"]

    def test_evicted_bundles_are_dropped(self, store: StateStore) -> None:
        """Bundles named in ``evicted`` are gone after the commit; others stay."""
        both = control_state(version_record("v1", 1), version_record("v2", 2))
        store.commit(0, both, bundles={"v1": "1", "v2": "2"})
        store.commit(1, control_state(version_record("v2", 2)), evicted=["v1"])
        assert store.bundle_json("v1") is None
        assert store.bundle_json("v2") == "2"

    def test_audit_keeps_order_filters_and_limits(self, store: StateStore) -> None:
        """Audit entries come back oldest first with increasing seq, by version, and the last ``limit``."""
        store.commit(0, control_state(), audit=[audit_entry("v1"), audit_entry("v2")])
        store.commit(1, control_state(), audit=[audit_entry("v1", "activate")])
        log = store.audit_log()
        assert [(e.version_id, e.action) for e in log] == [("v1", "prepare"), ("v2", "prepare"), ("v1", "activate")]
        seqs = [e.seq for e in log]
        assert None not in seqs
        assert seqs == sorted(s for s in seqs if s is not None)
        assert len(set(seqs)) == 3
        assert [e.action for e in store.audit_log("v1")] == ["prepare", "activate"]
        assert [e.version_id for e in store.audit_log(limit=2)] == ["v2", "v1"]
        assert replace(log[0], seq=None) == audit_entry("v1")

    def test_health_adds_sums_windows_and_prunes(self, store: StateStore) -> None:
        """Deltas add up per bucket; ``since`` sums buckets from it; pruning keeps lifetime totals."""
        store.add_health("v1", 0.0, HealthCounts(10, 1, 0, 100.0, (0, 2), {"allow": 3}))
        store.add_health("v1", 0.0, HealthCounts(5, 0, 1, 50.0, (1,), {"allow": 1, "deny": 2}))
        store.add_health("v1", 10.0, HealthCounts(7, 2, 0, 70.0))
        store.add_health("v2", 10.0, HealthCounts(3))
        assert store.health(["v1"], since=0.0)["v1"] == HealthCounts(22, 3, 1, 220.0, (1, 2), {"allow": 4, "deny": 2})
        assert store.health(["v1", "v2"], since=5.0) == {"v1": HealthCounts(7, 2, 0, 70.0), "v2": HealthCounts(3)}
        store.prune_health(before=5.0)
        assert store.health(["v1"], since=0.0)["v1"] == HealthCounts(7, 2, 0, 70.0)
        assert store.health(["v1"])["v1"].evaluations == 22  # lifetime survives pruning
        assert store.health(["unknown"], since=0.0) == {"unknown": HealthCounts()}

    def test_add_health_many_adds_every_delta(self, store: StateStore) -> None:
        """``add_health_many`` counts each delta once."""
        store.add_health_many(
            [("v1", 0.0, HealthCounts(1)), ("v1", 5.0, HealthCounts(2)), ("v2", 0.0, HealthCounts(4))]
        )
        assert store.health(["v1", "v2"]) == {"v1": HealthCounts(3), "v2": HealthCounts(4)}

    # --- several deployments in one store ------------------------------------------------------------

    def test_deployments_keep_apart_everything_but_the_identity(self, store: StateStore) -> None:
        """Two deployments: own revisions, states, bundles (same version id), audit chains, health, fleet rows."""
        one, two = store.scoped("one"), store.scoped("two")
        try:
            first = control_state(version_record("v1", 1, DeploymentState.ACTIVE), active="v1")
            one.commit(0, first, bundles={"v1": "one"}, audit=[audit_entry("v1")])
            one.commit(1, first, audit=[audit_entry("v1", "activate")])
            two.commit(0, control_state(version_record("v1", 1)), bundles={"v1": "two"}, audit=[audit_entry("v1")])
            assert (one.revision(), two.revision()) == (2, 1)
            assert one.load() == replace(first, revision=2)
            assert (one.bundle_json("v1"), two.bundle_json("v1")) == ("one", "two")
            assert [e.action for e in one.audit_log()] == ["prepare", "activate"]
            assert [e.action for e in two.audit_log("v1")] == ["prepare"]
            seqs = [e.seq for e in one.audit_log() + two.audit_log()]
            assert len(set(seqs)) == 3  # the store numbers entries once for all its deployments
            assert one.verify_audit().ok
            assert two.verify_audit().ok
            assert one.verify_audit().checked == 2
            assert one.identity() == two.identity() == store.identity()
            with pytest.raises(ConflictError):
                two.commit(0, control_state())
            assert one.revision() == 2
            one.add_health("v1", 0.0, HealthCounts(5))
            assert (one.health(["v1"])["v1"].evaluations, two.health(["v1"])["v1"].evaluations) == (5, 0)
            two.prune_health(before=10.0)
            assert one.health(["v1"], since=0.0)["v1"].evaluations == 5
            assert store.deployment_names() == ["one", "two"]
            assert [(d.name, d.revision, d.active_version_id) for d in store.deployments()] == [
                ("one", 2, "v1"),
                ("two", 1, None),
            ]
            assert store.deployment_states()["one"] == replace(first, revision=2)
        finally:
            one.close()
            two.close()

    def test_fleet_rows_belong_to_their_deployment(self, store: StateStore) -> None:
        """An instance registered on one deployment is listed and expired there only."""
        one, two = store.scoped("one"), store.scoped("two")
        try:
            one.commit(0, control_state())
            two.commit(0, control_state())
            one.register_instance(_instance("i1", 10.0))
            two.register_instance(_instance("i2", 10.0))
            assert [i.instance_id for i in one.instances()] == ["i1"]
            assert two.forget_instances(last_seen_before=20.0) == 1
            assert [i.instance_id for i in one.instances()] == ["i1"]
            assert two.instances() == []
        finally:
            one.close()
            two.close()

    def test_an_unbound_handle_names_its_first_deployment_and_binds_to_the_only_one(self, store: StateStore) -> None:
        """Unbound: empty until the first commit, which names the deployment after its policy; bound from then on."""
        assert store.deployment is None
        assert store.deployment_names() == []
        store.commit(0, control_state(version_record("v1", 1, bundle_id="gateway")))
        assert store.deployment == "gateway"  # the record's bundle_id
        assert store.deployment_names() == ["gateway"]
        other = store.scoped("other")
        try:
            other.commit(0, control_state())
            assert store.revision() == 1  # still bound to "mini"
        finally:
            other.close()

    def test_an_unbound_handle_on_several_deployments_names_them(self, store: StateStore) -> None:
        """With several deployments and none named, a read says which there are; listing them works."""
        for name in ("one", "two"):
            handle = store.scoped(name)
            handle.commit(0, control_state())
            handle.close()
        with pytest.raises(AmbiguousDeploymentError, match="'one', 'two'") as caught:
            store.load()
        assert caught.value.names == ["one", "two"]
        assert store.deployment_names() == ["one", "two"]
        with pytest.raises(StoreURLError, match="not a deployment name"):
            store.scoped("no spaces")


def _instance(instance_id: str, last_seen: float) -> InstanceInfo:
    return InstanceInfo(instance_id, "host", 1, 0.0, "0", 1, None, 0, None, None, 0.0, (), last_seen)
