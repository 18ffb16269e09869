"""Shared by the peer scripts, which run in their own venvs (stdlib + the peer only).

Puts ``benchmarks/`` and ``bundles/`` on ``sys.path`` (for ``_timing`` and
``generate_synthetic``, both stdlib-only) and measures the in-process baselines every
peer reports alongside its own figures, so they can be expressed as ratios.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PEERS_DIR = Path(__file__).resolve().parent
BENCH_DIR = PEERS_DIR.parent
REPO_DIR = BENCH_DIR.parent
for _p in (str(BENCH_DIR), str(REPO_DIR / "bundles")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _timing import Case, calibrate, interleaved  # noqa: E402

#: Connection attempts refused by forbid_network(), as "host:port" strings.
NETWORK_ATTEMPTS: list[str] = []


def forbid_network() -> None:
    """Make every outgoing connection / DNS lookup fail fast, and record it.

    The peers must run offline: a flag SDK that still tries to register, poll or send
    events shows up as ``network_attempts`` in the JSON instead of touching the network
    or hanging on a timeout.
    """

    def refuse(what: str) -> OSError:
        NETWORK_ATTEMPTS.append(what)
        return OSError(f"network disabled by benchmarks/peers (attempted {what})")

    def connect(self: socket.socket, address: Any) -> None:
        raise refuse(f"connect {address!r}")

    def connect_ex(self: socket.socket, address: Any) -> int:
        raise refuse(f"connect_ex {address!r}")

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        raise refuse(f"getaddrinfo {host!r}:{port!r}")

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        raise refuse(f"create_connection {address!r}")

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = getaddrinfo
    socket.create_connection = create_connection


def finish(exit_code: int = 0) -> None:
    """Exit now, even if an SDK left a non-daemon thread behind (reported on stderr)."""
    leftover = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if leftover:
        print(f"note: threads still alive at exit: {leftover}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def live_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())


#: Same 16-char key as benchmarks/ideal.py HASH_KEY (the unit "H").
HASH_KEY = "user-0000012345a"


class _Box:
    __slots__ = ("_x",)

    def __init__(self) -> None:
        self._x = "stable"

    def get(self) -> object:
        return self._x


def baseline_cases() -> dict[str, Case]:
    """``bare_call`` always; ``H`` (bare mmh3.hash of a 16-char key) if mmh3 is importable."""
    cases: dict[str, Case] = {"bare_call": _Box().get}
    try:
        import mmh3
    except ImportError:
        pass
    else:
        hash_fn: Callable[..., object] = mmh3.hash
        cases["H"] = (hash_fn, (HASH_KEY,))
    return cases


def measure_with_baselines(
    cases: Mapping[str, Case], *, repeat: int = 25, number: Mapping[str, int] | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """Time ``cases`` interleaved with the baselines; returns (ns, baseline_ns)."""
    base = baseline_cases()
    all_cases: dict[str, Case] = {**{f"__base_{k}": v for k, v in base.items()}, **cases}
    numbers: dict[str, int] | None = None
    if number is not None:
        numbers = {k: number[k] if k in number else calibrate(v) for k, v in all_cases.items()}
    ns = interleaved(all_cases, repeat=repeat, number=numbers)
    baseline_ns = {k: round(ns[f"__base_{k}"], 2) for k in base}
    return {k: round(ns[k], 2) for k in cases}, baseline_ns


def emit(
    peer: str,
    version: str,
    ns: Mapping[str, float],
    baseline_ns: Mapping[str, float],
    **extra: Any,
) -> None:
    """Print the one JSON object run_peers.py collects."""
    out: dict[str, Any] = {
        "peer": peer,
        "version": version,
        "python": platform.python_version(),
        "ns": dict(ns),
        "baseline_ns": dict(baseline_ns),
    }
    out["network_attempts"] = len(NETWORK_ATTEMPTS)
    if NETWORK_ATTEMPTS:
        out["network_attempts_sample"] = NETWORK_ATTEMPTS[:5]
    out.update(extra)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


def rollout_keys(n: int = 20_000) -> list[str]:
    """``n`` distinct 16-char user keys."""
    return [f"user-{i:011d}" for i in range(n)]


def rollout_share(check: Callable[[str], bool], n: int = 20_000) -> float:
    """Fraction of ``n`` distinct keys for which ``check(key)`` is true."""
    keys = rollout_keys(n)
    return sum(1 for k in keys if check(k)) / n


def require_share(share: float, want: float = 0.10, tolerance: float = 0.02) -> None:
    """Fail loudly unless the SDK really evaluated a ~``want`` rollout (not a default)."""
    if abs(share - want) > tolerance:
        print(f"rollout share {share:.3f} is not ~{want}: flag not evaluated?", file=sys.stderr)
        finish(2)


#: The benchmark's evaluate case (benchmarks/bench_table.py): pair (agent 7, flow 3), 10 rules,
#: first match at the 6th.
CELL_AGENT, CELL_FLOW, CELL_MATCH_AT = 7, 3, 6


def cell_case() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], tuple[str, str | None]]:
    """(bundle holding only the cell's 10 rules, those rules in priority order, event, expected).

    The pair's rules are seeded per (seed, agent, flow), so they are the very rules of that
    pair in the 10k-rule synthetic bundle bench_table.py measures.
    """
    from generate_synthetic import agent_name, expected_outcome, flow_name, matching_event, synthetic_bundle

    bundle = synthetic_bundle(CELL_AGENT + 1, CELL_FLOW + 1, 10)
    a, f = agent_name(CELL_AGENT), flow_name(CELL_FLOW)
    rules = [r for r in bundle["rules"] if r["agents"] == [a] and r["flows"] == [f]]
    rules.sort(key=lambda r: -r.get("priority", 0))
    cell = {k: v for k, v in bundle.items() if k not in ("rules", "tests", "examples")}
    cell["rules"] = rules
    event = matching_event(CELL_AGENT, CELL_FLOW, CELL_MATCH_AT)
    want = expected_outcome(CELL_AGENT, CELL_FLOW, CELL_MATCH_AT)
    return cell, rules, event, want


def emit_cell(
    peer: str,
    version: str,
    evaluate: Case,
    prepare: Case,
    decided: tuple[str, str | None],
    want: tuple[str, str | None],
    repeat: int = 15,
) -> None:
    """Check the peer's decision, then time ``evaluate`` and ``prepare`` (source -> compiled form)."""
    if tuple(decided) != tuple(want):
        emit(peer, version, {}, {}, mismatch=f"peer decides {decided}, ours {want}: not timed")
        return
    ns, baseline_ns = measure_with_baselines({"evaluate": evaluate, "prepare": prepare}, repeat=repeat)
    emit(peer, version, ns, baseline_ns, decided=list(decided))


#: Our comparison ops -> the infix operator most expression languages spell them with.
INFIX_OPS = {"eq": "==", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def infix_translator(
    and_: str, or_: str, not_: str, leaf: Callable[[str, str, Any], str]
) -> Callable[[Mapping[str, Any]], str]:
    """Our condition tree -> an infix expression: ``and_``/``or_`` join, ``not_`` is a format with ``{}``."""

    def translate(node: Mapping[str, Any]) -> str:
        if "all" in node:
            return "(" + f" {and_} ".join(translate(c) for c in node["all"]) + ")"
        if "any" in node:
            return "(" + f" {or_} ".join(translate(c) for c in node["any"]) + ")"
        if "not" in node:
            return not_.format(translate(node["not"]))
        return leaf(node["field"], node["op"], node.get("value"))

    return translate


def cell_repeat(argv: list[str] | None) -> int:
    """The ``--repeat N`` (default 15) every evaluate-case peer script takes."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    return int(parser.parse_args(argv).repeat)


def outcome_at(rules: list[dict[str, Any]], index: int) -> tuple[str, str | None]:
    """(decision, rule id) of ``rules[index]``; a negative index means no rule matched."""
    if index < 0:
        return "default", None
    rule = rules[index]
    return rule["then"]["decision"], rule["id"]
