"""The hypothesis state machine of tests/test_state_machine.py, unchanged, on PostgresStore.

Each example gets a fresh database on the session's server (dropped in teardown); the machine, its
rules and its reference model are imported as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _support_postgres import PgServer
from hypothesis import settings
from test_state_machine import CI_SETTINGS, SOAK, ManagerMachine

from rule_engine.stores.base import StateStore

_SERVER: list[PgServer] = []


@pytest.fixture(autouse=True)
def _session_server(pg_server: PgServer) -> Iterator[None]:
    """Make the session's server known to the store factory (the machine is a unittest case)."""
    _SERVER[:] = [pg_server]
    yield
    _SERVER.clear()


def _postgres_store() -> StateStore:
    from rule_engine.stores.postgres import PostgresStore

    return PostgresStore(_SERVER[0].create_database())


class _PostgresMachine(ManagerMachine):
    def teardown(self) -> None:
        conninfo = self.store._conninfo  # type: ignore[attr-defined]
        super().teardown()
        _SERVER[0].drop_database(conninfo)


def _case(name: str, auto_rollback: bool, config: settings) -> Any:
    machine = type(
        name, (_PostgresMachine,), {"store_factory": staticmethod(_postgres_store), "auto_rollback": auto_rollback}
    )
    case = machine.TestCase
    case.settings = config
    return case


TestPostgresAutoRollback = _case(
    "PostgresAutoRollback",
    True,
    settings(CI_SETTINGS, max_examples=100 if SOAK else 8, stateful_step_count=40 if SOAK else 20),
)
