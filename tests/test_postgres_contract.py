"""The store contract suite, unchanged, against PostgresStore on a fresh database per test.

The contract tests are imported from ``tests/test_store_contract.py`` as they are; only the ``store``
fixture differs (pytest resolves fixtures in the module a test is collected from).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_store_contract import (
    test_add_health_many_adds_every_delta,
    test_audit_keeps_order_filters_and_limits,
    test_commit_bumps_revision_and_load_returns_it,
    test_evicted_bundles_are_dropped,
    test_health_adds_sums_windows_and_prunes,
    test_new_store_is_empty_at_revision_zero,
    test_stale_revision_conflicts_and_writes_nothing,
)

from rule_engine.stores.base import StateStore

__all__ = [
    "test_add_health_many_adds_every_delta",
    "test_audit_keeps_order_filters_and_limits",
    "test_commit_bumps_revision_and_load_returns_it",
    "test_evicted_bundles_are_dropped",
    "test_health_adds_sums_windows_and_prunes",
    "test_new_store_is_empty_at_revision_zero",
    "test_stale_revision_conflicts_and_writes_nothing",
]


@pytest.fixture
def store(pg_database: str) -> Iterator[StateStore]:
    """A PostgresStore on a database of its own."""
    from rule_engine.stores.postgres import PostgresStore

    backend = PostgresStore(pg_database)
    yield backend
    backend.close()
