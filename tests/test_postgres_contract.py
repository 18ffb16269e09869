"""The store contract suite, unchanged, against PostgresStore on a fresh database per test.

``StoreContractTests`` (the reusable contract, ``rule_engine.testing.store_contract``) supplies every
test; this module only says how to make an empty PostgreSQL store.
"""

from __future__ import annotations

import pytest

from rule_engine.stores.base import StateStore
from rule_engine.testing.store_contract import StoreContractTests


class TestPostgresStore(StoreContractTests):
    """The whole contract on PostgreSQL."""

    @pytest.fixture
    def make_store(self, pg_database: str) -> StateStore:
        """A PostgresStore on a database of its own (created by its first call)."""
        from rule_engine.stores.postgres import PostgresStore

        return PostgresStore(pg_database)
