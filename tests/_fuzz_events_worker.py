"""Fuzz worker: hostile events and keys through ``RuleEngine.evaluate`` during a canary or an A/B test.

Run as ``python tests/_fuzz_events_worker.py MODE EXAMPLES SEED`` (MODE: ``canary`` or ``ab``) by
``tests/test_fuzz_events.py``, in a subprocess, so that a crash (SIGSEGV in a C extension, as D1
was) fails that test instead of killing pytest. Prints one JSON summary as its last stdout line and
exits 0 when every property held; a failing example makes hypothesis raise, and the exit status is 1.

Properties, for every generated batch of (event, key) calls:

* ``evaluate`` returns a :class:`~rule_engine.Decision` and never raises, whatever the event
  (arbitrary JSON with lone surrogates, NaN/inf, huge ints, deep nesting; odd or raising Mappings;
  not a Mapping at all) or the key (surrogates, huge ints, bytes, objects whose ``__str__`` raises);
* health totals add up: the candidate's recorder counts exactly the calls routed to it (routing
  recomputed independently with ``hash_key``), and the stable recorder the calls routed to it,
  (fallbacks of candidate errors are counted apart, D4).
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rule_engine import ABTest, Canary, Decision, DeploymentManager, RuleEngine  # noqa: E402
from rule_engine.serving.routing import hash_key  # noqa: E402

_MASK64 = (1 << 64) - 1
FIELDS = ["user_id", "agent_id", "flow_id", "risk", "amount", "ua", "geo", "tags", "name", "session"]


def _bundle(version: str, *, extra: bool) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [
        {
            "id": "risky",
            "priority": 90,
            "when": {"field": "risk", "op": "gte", "value": 0.8},
            "then": {"decision": "deny"},
        },
        {
            "id": "country",
            "priority": 80,
            "agents": ["gw", "\u00e9"],
            "flows": ["login"],
            "when": {"field": "geo.country", "op": "in", "value": ["KP", "IR"]},
            "then": {"decision": "deny"},
        },
        {
            "id": "bot",
            "priority": 70,
            "when": {"field": "ua", "op": "matches", "value": "(?i)bot|crawl"},
            "then": {"decision": "throttle"},
        },
        {
            "id": "vip",
            "priority": 60,
            "flows": ["pay"],
            "when": {"field": "tags", "op": "contains", "value": "vip"},
            "then": {"decision": "allow"},
        },
        {
            "id": "admin",
            "priority": 50,
            "when": {"field": "name", "op": "starts_with", "value": "adm"},
            "then": {"decision": "review"},
        },
        {
            "id": "old",
            "priority": 40,
            "when": {
                "all": [
                    {"field": "session.age", "op": "gt", "value": 3600},
                    {"not": {"field": "amount", "op": "lt", "value": 10}},
                ]
            },
            "then": {"decision": "challenge"},
        },
    ]
    if extra:
        rules.append(
            {
                "id": "big",
                "priority": 30,
                "when": {"field": "amount", "op": "ne", "value": 0},
                "then": {"decision": "review"},
            }
        )
    return {
        "bundle_id": "fuzz",
        "version": version,
        "default": {"decision": "allow"},
        "on_error": {"decision": "review"},
        "rules": rules,
    }


# --- hostile values ---------------------------------------------------------------------------

hostile_text = st.text(
    st.characters(codec=None, exclude_categories=()) | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    max_size=24,
)
numbers = (
    st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.builds(pow, st.just(10), st.just(5000))  # over the int-to-str limit
    | st.floats()  # NaN and the infinities included
    | st.sampled_from([0.8, 3601, -0.0, 1e308])
)
scalars = (
    st.none() | st.booleans() | numbers | hostile_text | st.sampled_from(["KP", "vip", "Googlebot", "admin", "gw"])
)


class RaisingMapping(Mapping[str, Any]):
    """A Mapping whose reads raise."""

    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc

    def __getitem__(self, key: str) -> Any:
        raise self.exc("no")  # type: ignore[call-arg]

    def get(self, key: str, default: Any = None) -> Any:
        raise self.exc("no")  # type: ignore[call-arg]

    def __contains__(self, key: object) -> bool:
        raise self.exc("no")  # type: ignore[call-arg]

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class GetRaisesDict(dict[str, Any]):
    """A dict whose ``get`` raises (the compiled matcher calls ``get``)."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        raise KeyError(key)


class Unprintable:
    """An object whose ``__str__`` and ``__repr__`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _nest(depth: int, leaf: Any) -> Any:
    value = leaf
    for i in range(depth):
        value = {"session": value} if i % 2 else [value]
    return value


def _odd_mappings(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return (
        children
        | children.map(OrderedDict)
        | children.map(MappingProxyType)
        | children.map(lambda d: defaultdict(int, d))
        | children.map(GetRaisesDict)
        | st.sampled_from([RuntimeError, TypeError, RecursionError]).map(RaisingMapping)
    )


keys_of = st.sampled_from(FIELDS) | hostile_text
json_values = st.recursive(
    scalars | st.builds(Unprintable),
    lambda children: st.lists(children, max_size=4) | _odd_mappings(st.dictionaries(keys_of, children, max_size=4)),
    max_leaves=12,
)
deep = st.builds(_nest, st.integers(1, 2000), scalars)
field_events = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(FIELDS, json_values),
        "agent_id": st.sampled_from(["gw", "\u00e9", "x"]) | json_values,
        "flow_id": st.sampled_from(["login", "pay"]) | json_values,
        "geo": st.fixed_dictionaries({"country": st.sampled_from(["KP", "FR"]) | json_values}) | json_values,
        "session": st.fixed_dictionaries({"age": numbers | json_values}) | deep,
    },
)
events = st.one_of(field_events, field_events, _odd_mappings(field_events), st.lists(json_values, max_size=3), scalars)
routing_keys = (
    st.none()
    | hostile_text
    | st.integers()
    | st.builds(pow, st.just(10), st.just(5000))
    | st.binary(max_size=16)
    | st.builds(Unprintable)
    | st.floats()
    | st.lists(st.integers(), max_size=2)
)
calls = st.lists(st.tuples(events, routing_keys), min_size=1, max_size=6)


def _expected_arm(snapshot: Any, event: Any, key: Any) -> str:
    """Where the engine must route a call: recomputed from the spec (docs/routing.md)."""
    if key is None:
        try:
            key = event.get("user_id")
        except Exception:
            return "stable"
    request_hash = hash_key(key, snapshot.seed)  # under the rollout's algorithm: seed 0 (v1), the salt's (v2)
    if request_hash is None:
        return "stable"
    if not snapshot.multiplier:  # algorithm 2: the seeded hash is compared as it is
        return "candidate" if request_hash < snapshot.limit else "stable"
    return (
        "candidate" if (snapshot.multiplier * request_hash + snapshot.offset) & _MASK64 < snapshot.limit else "stable"
    )


def main(mode: str, examples: int, seed_value: int) -> int:
    manager = DeploymentManager(auto_rollback=False)
    stable_id = manager.prepare_deployment(_bundle("1.0.0", extra=False))
    manager.activate_deployment(stable_id)
    strategy = Canary((50, 100), 3600) if mode == "canary" else ABTest(0.5, 3600)
    candidate_id = manager.prepare_deployment(_bundle("2.0.0", extra=True), strategy)
    manager.activate_deployment(candidate_id)
    engine = RuleEngine(manager)
    snapshot = manager.serving_cell.current
    assert snapshot.candidate is not None, "no rollout in progress"
    tally = {"calls": 0, "stable": 0, "candidate": 0, "fallbacks": 0, "error_decisions": 0, "examples": 0}

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(calls)
    def run(batch: list[tuple[Any, Any]]) -> None:
        tally["examples"] += 1
        for event, key in batch:
            arm = _expected_arm(snapshot, event, key)
            decision = engine.evaluate(event, key=key)  # must not raise
            assert type(decision) is Decision, decision
            tally["calls"] += 1
            tally[arm] += 1
            if arm == "candidate" and decision.version_id == stable_id:
                tally["fallbacks"] += 1
            if decision.is_error:
                tally["error_decisions"] += 1

    run()
    stable_counted = snapshot.stable_recorder.totals().evaluations
    candidate_counted = snapshot.candidate_recorder.totals().evaluations
    assert candidate_counted == tally["candidate"], (candidate_counted, tally)
    assert stable_counted == tally["stable"], (stable_counted, tally)  # fallbacks are counted apart (D4)
    print(json.dumps({**tally, "stable_counted": stable_counted, "candidate_counted": candidate_counted, "mode": mode}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
