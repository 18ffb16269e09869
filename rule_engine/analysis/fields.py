"""Every field each rule reads, and the kind of value each comparison needs to run without raising.

Derived from a compiled :class:`~rule_engine.RuleTable` (its rules' condition models), with the
compiler's run-time semantics (docs/bundle-format.md): a missing or null field, or a path through a
non-object, makes a leaf false; a present value of another kind than the comparison needs raises
:class:`~rule_engine.RuleEvaluationError`. So for each leaf, :attr:`FieldUse.needs` is the set of
JSON kinds a present, non-null value may have (None: any kind, for ``exists`` and ``eq``/``ne null``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rule_engine.bundle.models import AllCondition, AnyCondition, Leaf, NotCondition, RuleBundle, kind_of
from rule_engine.evaluation.table import RuleTable

__all__ = [
    "FieldUse",
    "Observer",
    "compile_observer",
    "field_uses",
    "kind_of_type",
    "leaves_of",
    "needed_kinds",
]


@dataclass(frozen=True, slots=True)
class FieldUse:
    """One comparison: which rule, which field, which operator, and the kinds it accepts."""

    rule_id: str
    field: str
    path: tuple[str, ...]
    op: str
    value_kind: str | None
    needs: frozenset[str] | None
    agents: tuple[str, ...] | None
    flows: tuple[str, ...] | None

    def accepts(self, kind: str) -> bool:
        """Whether a present, non-null value of ``kind`` can be compared without raising."""
        return self.needs is None or kind in self.needs

    def applies_to(self, agent: Any, flow: Any) -> bool:
        """Whether the rule is tried for an event of this agent and flow."""
        return (self.agents is None or agent in self.agents) and (self.flows is None or flow in self.flows)


def needed_kinds(leaf: Leaf) -> frozenset[str] | None:
    """The kinds of a present, non-null value the leaf compares without raising (None: any)."""
    op, value = leaf.op, leaf.value
    if op == "exists" or (op in ("eq", "ne") and value is None):
        return None
    if op in ("in", "not_in"):
        return frozenset({kind_of(value[0])})
    if op == "contains":
        return frozenset({"string", "list"}) if kind_of(value) == "string" else frozenset({"list"})
    if op in ("starts_with", "ends_with", "matches"):
        return frozenset({"string"})
    return frozenset({kind_of(value)})


def leaves_of(condition: Any) -> Iterator[Leaf]:
    """Every leaf of a condition tree, in order."""
    if condition is None:
        return
    if isinstance(condition, AllCondition | AnyCondition):
        for child in condition.conditions:
            yield from leaves_of(child)
    elif isinstance(condition, NotCondition):
        yield from leaves_of(condition.condition)
    elif isinstance(condition, Leaf):
        yield condition


def field_uses(source: RuleTable | RuleBundle) -> list[FieldUse]:
    """Every comparison of every rule, rules in the order the table tries them."""
    table = source if isinstance(source, RuleTable) else RuleTable.from_bundle(source)
    uses: list[FieldUse] = []
    for compiled in table.rules:
        rule = compiled.rule
        for leaf in leaves_of(rule.when):
            value_kind = None
            if leaf.has_value:
                value_kind = kind_of(leaf.value[0]) if leaf.op in ("in", "not_in") else kind_of(leaf.value)
            uses.append(
                FieldUse(
                    rule.id, leaf.field, leaf.path, leaf.op, value_kind, needed_kinds(leaf), rule.agents, rule.flows
                )
            )
    return uses


_KINDS: dict[type, str | None] = {
    str: "string",
    int: "number",
    float: "number",
    bool: "bool",
    dict: "object",
    list: "list",
    type(None): None,
}


def _mapping_or_none(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def kind_of_type(cls: type) -> str | None:
    """:func:`~rule_engine.bundle.values.kind_of` of any value of type ``cls`` (None for NoneType)."""
    if cls in _KINDS:
        return _KINDS[cls]
    if issubclass(cls, bool):
        return "bool"
    if issubclass(cls, int | float):
        return "number"
    if issubclass(cls, str):
        return "string"
    if issubclass(cls, list | tuple):
        return "list"
    if issubclass(cls, Mapping):
        return "object"
    return cls.__name__


Observer = Callable[[Mapping[str, Any]], tuple[type, ...]]


def compile_observer(paths: tuple[tuple[str, ...], ...]) -> Observer:
    """A function ``event -> types``: the type of the value at each path (``NoneType``: missing, null
    or under a non-object); :func:`kind_of_type` turns a type into its kind.

    Compiled once per set of paths, like the rule compiler: the paths become a trie so a shared
    prefix (``user`` in ``user.id`` and ``user.email``) is read once; path parts are bound as
    constants, never written into the source. Per path the cost is one ``get`` and one ``type()``.
    """
    constants: list[Any] = []
    lines: list[str] = []
    names: dict[tuple[str, ...], str] = {(): "event"}
    maps: dict[tuple[str, ...], str] = {(): "event"}

    def const(value: Any) -> str:
        constants.append(value)
        return f"c{len(constants) - 1}"

    def node(path: tuple[str, ...]) -> str:
        if path in names:
            return names[path]
        parent = mapping(path[:-1])
        name = f"r{len(names)}"
        if parent == "event":
            lines.append(f"{name} = event.get({const(path[-1])})")
        else:
            lines.append(f"{name} = {parent}.get({const(path[-1])}) if {parent} is not None else None")
        names[path] = name
        return name

    def mapping(path: tuple[str, ...]) -> str:
        if path in maps:
            return maps[path]
        raw = node(path)
        name = f"m{len(maps)}"
        lines.append(f"{name} = {raw} if type({raw}) is dict or {raw} is None else _map({raw})")
        maps[path] = name
        return name

    results = [node(path) for path in paths]
    tail = "".join(f"type({r}), " for r in results)
    args = ", ".join(f"c{i}" for i in range(len(constants)))
    body = "".join(f"    {line}\n" for line in lines)
    source = f"def factory({args}):\n  def observe(event):\n{body}    return ({tail})\n  return observe\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, "<rule_engine.analysis.fields>", "exec"), {"_map": _mapping_or_none}, namespace)
    observer: Observer = namespace["factory"](*constants)
    return observer
