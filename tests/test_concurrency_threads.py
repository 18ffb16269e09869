"""Readers never lock and never see a torn state while writers swap versions; concurrent writers lose nothing."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from rule_engine import (
    ABTest,
    BlueGreen,
    Canary,
    DeploymentManager,
    RuleEngine,
    RuleEngineError,
    compute_request_hash,
)
from tests._support_deployment import mini_bundle

KEYS = [f"user-{i}" for i in range(512)]
HASHES = [compute_request_hash(k) for k in KEYS]
JOIN_TIMEOUT = 60.0


def _run_threads(targets: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"


def test_readers_see_only_live_versions_while_a_writer_swaps() -> None:
    """Readers routing and evaluating during hundreds of swaps see no error, no None, only versions made live."""
    manager = DeploymentManager(max_history=6)
    engine = RuleEngine(manager)
    live: set[str] = set()
    decoys: set[str] = set()
    first = manager.prepare_deployment(mini_bundle("0.0.0"), BlueGreen(), "writer")
    live.add(first)
    manager.activate_deployment(first)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[set[str]] = []
    reads = Counter[str]()
    writes = Counter[str]()

    def reader(offset: int) -> None:
        mine: set[str] = set()
        seen.append(mine)
        n = 0
        try:
            while not stop.is_set():
                i = (n + offset) % len(KEYS)
                key, request_hash = KEYS[i], HASHES[i]
                by_key = manager.route(key)
                by_hash = manager.route_and_get_table(request_hash)
                active = manager.get_active_table()
                decision = engine.evaluate({"x": 1, "user_id": key})
                assert by_key is not None
                assert by_hash is not None
                assert active is not None
                assert (decision.decision, decision.error) == ("deny", None), decision
                for version_id in (by_key.version_id, by_hash.version_id, active.version_id, decision.version_id):
                    assert version_id is not None
                    mine.add(version_id)
                n += 1
        except BaseException as exc:
            errors.append(exc)
        reads[f"reader-{offset}"] = n

    def make_live(version_id: str) -> str:
        live.add(version_id)  # recorded before it can serve
        return version_id

    def writer() -> None:
        try:
            for i in range(300):
                step = i % 6
                version = f"{i}.0.0"
                if step == 0:
                    manager.activate_deployment(make_live(manager.prepare_deployment(mini_bundle(version))))
                elif step == 1:
                    canary = make_live(manager.prepare_deployment(mini_bundle(version), Canary([5, 30, 60, 100], 0)))
                    manager.activate_deployment(canary)
                    manager.advance_rollout()
                    manager.advance_rollout()
                elif step == 2:
                    manager.rollback()
                elif step == 3:
                    b = make_live(manager.prepare_deployment(mini_bundle(version), ABTest(0.5)))
                    manager.activate_deployment(b)
                    stable = manager.get_active_version_id()
                    assert stable is not None
                    manager.conclude_experiment(b if i % 4 == 3 else stable)
                elif step == 4:
                    decoys.add(manager.prepare_deployment(mini_bundle(version)))  # staged, never served
                else:
                    canary = make_live(manager.prepare_deployment(mini_bundle(version), Canary([50, 100], 0)))
                    manager.activate_deployment(canary)
                    manager.advance_rollout()  # completes the canary
                    manager.rollback()  # back to the previous active version
                writes[f"step-{step}"] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    _run_threads([lambda: reader(0), lambda: reader(211), writer])
    assert errors == []
    assert sum(writes.values()) == 300
    assert len(reads) == 2
    assert all(n > 0 for n in reads.values())
    observed = set().union(*seen)
    assert observed <= live
    assert not observed & decoys
    assert len(observed) > 10  # the readers really did see the swaps


def test_concurrent_writers_are_serialized_and_none_is_lost() -> None:
    """Writers on several threads either succeed or fail with a typed error; the audit holds every success."""
    manager = DeploymentManager(max_history=1_000)
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("0.0.0")))
    successes = Counter[str]()
    typed_failures = Counter[str]()
    untyped: list[BaseException] = []
    lock = threading.Lock()
    activated: list[str] = []

    def count(name: str, ok: bool) -> None:
        with lock:
            (successes if ok else typed_failures)[name] += 1

    def writer(worker: int) -> None:
        for i in range(40):
            try:
                version_id = manager.prepare_deployment(mini_bundle(f"{worker}.{i}.0"), actor_strategy(i), f"w{worker}")
                count("prepare", True)
            except RuleEngineError:
                count("prepare", False)
                continue
            except BaseException as exc:
                untyped.append(exc)
                return
            attempt("activate", version_id)
            if i % 3 == 0:
                attempt("rollback", None)

    def attempt(name: str, version_id: str | None) -> None:
        try:
            if version_id is not None:
                manager.activate_deployment(version_id)
                with lock:
                    activated.append(version_id)
            else:
                manager.rollback()
            count(name, True)
        except RuleEngineError:
            count(name, False)
        except BaseException as exc:
            untyped.append(exc)

    def actor_strategy(i: int) -> BlueGreen | Canary:
        return Canary([20, 100], 3600) if i % 4 == 0 else BlueGreen()

    _run_threads([lambda w=w: writer(w) for w in range(4)])  # type: ignore[misc]
    assert untyped == []
    audit = manager.audit_log()
    assert successes["prepare"] == 160 - typed_failures["prepare"]
    assert successes["prepare"] + 1 == sum(1 for e in audit if e.action == "prepare")
    assert successes["activate"] + 1 == sum(1 for e in audit if e.action == "activate" and e.from_state == "staged")
    assert successes["rollback"] == sum(1 for e in audit if e.action == "rollback" and e.to_state == "rolled_back")
    assert typed_failures["activate"] > 0  # canaries in progress refused some activations
    assert len(set(activated)) == len(activated) == successes["activate"]
    assert [e.seq for e in audit] == list(range(1, len(audit) + 1))
