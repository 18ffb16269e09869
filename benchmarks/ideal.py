"""The "ideal" hand-written baselines the benchmarks compare the library against.

Everything here is the fastest straightforward pure-Python code with the same semantics
as the library, measured in the same process as the library:

* :class:`IdealEvaluator` - a bundle evaluator: dict lookup by agent then flow (wildcard
  rules merged in at build time, in priority order), one generated-code lambda per rule
  with values inlined as literals (via ``repr``; fine here because the baseline runs our
  own synthetic bundles, never user data), a missing field is false, and no
  type-mismatch checking at all.
* :func:`ideal_route` - routing as ``hash, bucket, pick``.
* :class:`Box` / :func:`bare_method_call` - a bare method call returning an attribute.
* :func:`bare_hash` - a bare ``mmh3.hash`` of a 16-char key (the unit "H").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import mmh3

__all__ = [
    "HASH_KEY",
    "Box",
    "IdealEvaluator",
    "bare_hash",
    "bare_method_call",
    "ideal_route",
]

#: The 16-char key used by the "H" baseline (bare mmh3.hash) and routing baselines.
HASH_KEY: Final = "user-0000012345a"
assert len(HASH_KEY) == 16

_MISSING: Final = object()
_EMPTY: Final[Mapping[str, Any]] = {}

RuleFn = Callable[[Mapping[str, Any]], bool]
_Entry = tuple[RuleFn, str, str]  # (predicate, rule id, decision)


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class _Codegen:
    """Turns one rule condition into a Python expression over the event ``e``."""

    def __init__(self) -> None:
        self.n_vars = 0
        self.namespace: dict[str, Any] = {"_M": _MISSING, "_E": _EMPTY}

    def _var(self) -> str:
        self.n_vars += 1
        return f"v{self.n_vars}"

    @staticmethod
    def _getter(field: str) -> str:
        """``e.get('a', _E).get('b', _M)`` for ``a.b``: a missing step yields ``_M``."""
        parts = field.split(".")
        expr = "e"
        for part in parts[:-1]:
            expr += f".get({part!r}, _E)"
        return expr + f".get({parts[-1]!r}, _M)"

    def _const(self, value: Any) -> str:
        """A literal for ``value``; lists become tuples (constant-folded by the compiler)."""
        if isinstance(value, list) and all(_is_scalar(v) for v in value):
            return "(" + "".join(f"{v!r}, " for v in value) + ")"
        if isinstance(value, list | dict):
            name = f"_K{len(self.namespace)}"
            self.namespace[name] = value
            return name
        return repr(value)

    def leaf(self, field: str, op: str, value: Any) -> str:
        get = self._getter(field)
        if op == "eq":  # _M never equals a JSON value: no guard needed
            return f"({get} == {self._const(value)})"
        if op == "in":
            if value and all(_is_scalar(v) for v in value):
                # a set display of constants in an `in` test is folded to a frozenset
                lit = "{" + "".join(f"{v!r}, " for v in value) + "}"
                return f"({get} in {lit})"
            return f"({get} in {self._const(value)})"
        if op == "exists":
            return f"({get} is not _M)"
        v = self._var()
        head = f"(({v} := {get}) is not _M and "
        lit = self._const(value)
        if op == "ne":
            return head + f"{v} != {lit})"
        if op in ("lt", "lte", "gt", "gte"):
            sym = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}[op]
            return head + f"{v} {sym} {lit})"
        if op == "not_in":
            return head + f"{v} not in {lit})"
        if op == "contains":
            return head + f"{lit} in {v})"
        if op == "starts_with":
            return head + f"{v}.startswith({lit}))"
        if op == "ends_with":
            return head + f"{v}.endswith({lit}))"
        if op == "matches":
            name = f"_R{len(self.namespace)}"
            self.namespace[name] = re.compile(value).search
            return head + f"{name}({v}) is not None)"
        raise ValueError(f"unknown op {op!r}")

    def cond(self, node: Mapping[str, Any]) -> str:
        if "all" in node:
            parts = [self.cond(c) for c in node["all"]]
            return "(" + " and ".join(parts) + ")" if parts else "True"
        if "any" in node:
            parts = [self.cond(c) for c in node["any"]]
            return "(" + " or ".join(parts) + ")" if parts else "False"
        if "not" in node:
            return f"(not {self.cond(node['not'])})"
        return self.leaf(node["field"], node["op"], node.get("value"))


def compile_condition(when: Mapping[str, Any]) -> RuleFn:
    """One generated lambda for one rule condition."""
    gen = _Codegen()
    src = f"lambda e: {gen.cond(when)}"
    fn: RuleFn = eval(compile(src, "<ideal-rule>", "eval"), gen.namespace)
    return fn


class IdealEvaluator:
    """Indexed evaluator: ``index[agent][flow]`` -> rules of that pair in priority order."""

    __slots__ = ("_default", "_index", "_other_agent")

    def __init__(
        self,
        index: dict[Any, tuple[dict[Any, tuple[_Entry, ...]], tuple[_Entry, ...]]],
        other_agent: tuple[dict[Any, tuple[_Entry, ...]], tuple[_Entry, ...]],
        default: tuple[str, str | None],
    ) -> None:
        self._index = index
        self._other_agent = other_agent
        self._default = default

    @classmethod
    def from_bundle(cls, bundle: Mapping[str, Any]) -> IdealEvaluator:
        rules: Sequence[Mapping[str, Any]] = bundle.get("rules", [])
        # (sort key, agents or None, flows or None, entry) - sort key = priority desc, file order
        compiled: list[tuple[tuple[int, int], frozenset[str] | None, frozenset[str] | None, _Entry]]
        compiled = []
        for pos, rule in enumerate(rules):
            entry: _Entry = (compile_condition(rule["when"]), rule["id"], rule["then"]["decision"])
            agents = frozenset(rule["agents"]) if rule.get("agents") else None
            flows = frozenset(rule["flows"]) if rule.get("flows") else None
            compiled.append(((-int(rule.get("priority", 0)), pos), agents, flows, entry))
        compiled.sort(key=lambda c: c[0])

        # Keys of the index: per agent some rule names, the flows its rules (or wildcard-agent
        # rules) name, plus None = "any other flow"; agent None = "any other agent".
        named_flows: dict[str | None, set[str]] = {None: set()}
        for _, ag, fl, _ in compiled:
            for a in ag if ag is not None else (None,):
                named_flows.setdefault(a, set()).update(fl or ())
        lists: dict[str | None, dict[str | None, list[_Entry]]] = {
            a: {f: [] for f in (*sorted(fs | named_flows[None]), None)} for a, fs in named_flows.items()
        }
        # Append every rule, in priority order, to every list it applies to.
        for _, ag, fl, entry in compiled:
            for a in ag if ag is not None else lists:
                per_flow = lists[a]
                for f in fl if fl is not None else per_flow:
                    per_flow[f].append(entry)

        def freeze(
            per_flow: dict[str | None, list[_Entry]],
        ) -> tuple[dict[Any, tuple[_Entry, ...]], tuple[_Entry, ...]]:
            other = tuple(per_flow[None])
            return ({f: tuple(v) for f, v in per_flow.items() if f is not None}, other)

        index = {a: freeze(pf) for a, pf in lists.items() if a is not None}
        other_agent = freeze(lists[None])
        then = bundle.get("default", {"decision": "allow"})
        return cls(index, other_agent, (then["decision"], None))

    def evaluate(self, event: Mapping[str, Any]) -> tuple[str, str | None]:
        """(decision, rule_id) of the first matching rule, else (default decision, None)."""
        flows, other = self._index.get(event.get("agent_id"), self._other_agent)
        for fn, rule_id, decision in flows.get(event.get("flow_id"), other):
            if fn(event):
                return decision, rule_id
        return self._default

    def candidates(self, agent_id: str, flow_id: str) -> int:
        """How many rules apply to (agent, flow) - for sanity checks."""
        flows, other = self._index.get(agent_id, self._other_agent)
        return len(flows.get(flow_id, other))


def ideal_route(key: str, candidate_share_bp: int, stable: str, candidate: str) -> str:
    """The ideal routing: hash, bucket, pick (share in basis points, 0..10000)."""
    h = mmh3.hash(key, 0, False)
    return candidate if h % 10000 < candidate_share_bp else stable


class Box:
    """A bare method call returning an attribute: the cheapest useful Python call."""

    __slots__ = ("_x",)

    def __init__(self, x: object = "stable") -> None:
        self._x = x

    def get(self) -> object:
        return self._x


def bare_method_call() -> Callable[[], object]:
    """The bound method ``Box().get`` - time calls of it for the bare-call baseline."""
    return Box().get


def bare_hash(key: str = HASH_KEY) -> int:
    """H: a bare ``mmh3.hash`` of a 16-char key. (Time ``mmh3.hash`` itself with
    ``args=(HASH_KEY,)`` to avoid this wrapper's own call.)"""
    return int(mmh3.hash(key))
