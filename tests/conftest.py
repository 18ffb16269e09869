"""Shared test configuration: hypothesis profiles.

``dev`` (the default) keeps the suite fast; ``ci`` (selected when the ``CI`` environment variable is
set, or with ``--hypothesis-profile=ci``) tries more examples and has no per-example deadline,
since shared CI machines have noisy timings, and is derandomized so every CI run tries the same
examples (new examples are explored by the dev profile and by ``RULE_ENGINE_SOAK=1``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
    derandomize=True,  # the same examples on every CI run: a red CI is a real, reproducible failure
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# PostgreSQL fixtures (a throwaway server per run, a database per test): see tests/_support_postgres.py
from _support_postgres import pg_cluster, pg_database, pg_fault_cluster, pg_server  # noqa: E402, F401
