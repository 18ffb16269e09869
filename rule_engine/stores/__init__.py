"""State stores: where deployment state lives (in memory, SQLite; PostgreSQL next).

Every backend implements :class:`~rule_engine.stores.base.StateStore`, and one contract test suite
(``tests/test_store_contract.py``) runs against each.
"""

from rule_engine.stores.base import StateStore, open_store
from rule_engine.stores.memory import MemoryStore
from rule_engine.stores.sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore", "StateStore", "open_store"]
