"""A public kit for testing code built on rule_engine (and for testing rule_engine's own backends).

- :class:`ManualClock`: a clock a test moves by hand (``now()``, ``advance(secs)``, ``set(t)``).
- :func:`bundle`, :func:`rule`: small bundle documents (plain dicts) for ``prepare_deployment``.
- :func:`version_record`, :func:`control_state`, :func:`audit_entry`: small control-plane values, for
  store tests.
- ``rule_engine.testing.store_contract.StoreContractTests``: the state store contract as a pytest base
  class; a backend's test module subclasses it and provides a ``make_store`` fixture (see
  ``docs/stores.md``). It imports pytest, so it is a separate module; importing this package does not
  need pytest.
"""

from __future__ import annotations

try:  # assertion messages from the contract suite as detailed as in a test module
    import pytest
except ImportError:  # pragma: no cover - the clock and builders work without pytest
    pass
else:
    pytest.register_assert_rewrite("rule_engine.testing.store_contract")

from rule_engine.testing.builders import audit_entry, bundle, control_state, rule, version_record
from rule_engine.testing.clock import ManualClock

__all__ = ["ManualClock", "audit_entry", "bundle", "control_state", "rule", "version_record"]
