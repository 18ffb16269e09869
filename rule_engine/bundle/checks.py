"""The limits walk: what the schema alone cannot say about a bundle.

Duplicate rule ids and test names, tests naming unknown rules, and the :class:`BundleLimits`
(sizes, nesting depth, finite numbers), checked in one pass over a validated bundle.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rule_engine.bundle.problems import in_rule, render_loc, suggest
from rule_engine.errors import Problem

if TYPE_CHECKING:
    from rule_engine.bundle.models import BundleLimits, Leaf, NotCondition, Outcome, RuleBundle


def semantic_problems(bundle: RuleBundle, limits: BundleLimits) -> Iterator[Problem]:
    """What the schema alone cannot say: duplicates, references, limits, finite numbers."""
    check = _Checker(limits)
    return iter(check.bundle(bundle))


_Path = tuple[int | str, ...]
_PLAIN = (int, bool, type(None))


class _Checker:
    """Walks a validated bundle once, collecting problems; paths are rendered only for problems."""

    def __init__(self, limits: BundleLimits) -> None:
        # The models' own validator runs this walk, so they are imported when it runs, not above.
        from rule_engine.bundle.models import AllCondition, AnyCondition, Leaf, NotCondition

        self.limits = limits
        self.problems: list[Problem] = []
        self.leaf: type[Leaf] = Leaf
        self.lists: dict[type, str] = {AllCondition: "all", AnyCondition: "any"}
        self.negation: type[NotCondition] = NotCondition
        self.rule_ids: list[str | None] = []

    def add(self, path: _Path, message: str) -> None:
        self.problems.append(Problem(render_loc(list(path), ""), message + in_rule(path, self.rule_ids)))

    def bundle(self, bundle: RuleBundle) -> list[Problem]:
        limits = self.limits
        self.rule_ids = [rule.id for rule in bundle.rules]
        if len(bundle.rules) > limits.max_rules:
            self.add(("rules",), f"{len(bundle.rules)} rules, over the limit of {limits.max_rules}")
        self.string(bundle.description, ("description",))
        seen: dict[str, int] = {}
        for index, rule in enumerate(bundle.rules):
            if rule.id in seen:
                self.add(("rules", index, "id"), f"duplicate rule id {rule.id!r} (first at rules[{seen[rule.id]}])")
            else:
                seen[rule.id] = index
            if rule.description is not None:
                self.string(rule.description, ("rules", index, "description"))
            if rule.when is not None:
                self.condition(rule.when, ("rules", index, "when"), 1)
            self.outcome(rule.then, ("rules", index, "then"))
        for name, outcome in (("default", bundle.default), ("on_error", bundle.on_error)):
            if outcome is not None:
                self.outcome(outcome, (name,))
        names: dict[str, int] = {}
        for index, test in enumerate(bundle.tests):
            if test.name in names:
                self.add(
                    ("tests", index, "name"),
                    f"duplicate test name {test.name!r} (first at tests[{names[test.name]}])",
                )
            else:
                names[test.name] = index
            rule_id = test.expect.rule_id
            if rule_id is not None and rule_id not in seen:
                self.add(("tests", index, "expect", "rule_id"), f"unknown rule {rule_id!r}{suggest(rule_id, seen)}")
            self.value(test.event, ("tests", index, "event"), 1)
        return self.problems

    def condition(self, cond: Any, path: _Path, depth: int) -> None:
        limits = self.limits
        if depth > limits.max_depth:
            self.add(path, f"condition nesting depth exceeds the limit of {limits.max_depth}")
            return
        kind = type(cond)
        if kind is self.leaf:
            if len(cond.field) > limits.max_string:
                self.add((*path, "field"), f"field path longer than the limit of {limits.max_string} characters")
            value = cond.value
            if type(value) in _PLAIN:
                return
            if cond.op == "matches" and isinstance(value, str) and len(value) > limits.max_regex:
                self.add(
                    (*path, "value"),
                    f"regular expression of {len(value)} characters, over the limit of {limits.max_regex}",
                )
            elif isinstance(value, list) and len(value) > limits.max_list:
                self.add((*path, "value"), f"list of {len(value)} items, over the limit of {limits.max_list}")
            else:
                self.value(value, (*path, "value"), depth)
        elif kind in self.lists:
            key = self.lists[kind]
            if len(cond.conditions) > limits.max_list:
                self.add(
                    (*path, key), f"list of {len(cond.conditions)} conditions, over the limit of {limits.max_list}"
                )
            for i, child in enumerate(cond.conditions):
                self.condition(child, (*path, key, i), depth + 1)
        elif kind is self.negation:
            self.condition(cond.condition, (*path, "not"), depth + 1)

    def outcome(self, outcome: Outcome, path: _Path) -> None:
        if outcome.reason is not None:
            self.string(outcome.reason, (*path, "reason"))
        if outcome.params is not None:
            self.value(outcome.params, (*path, "params"), 1)

    def string(self, text: str | None, path: _Path) -> None:
        if text is not None and len(text) > self.limits.max_string:
            self.add(path, f"string of {len(text)} characters, over the limit of {self.limits.max_string}")

    def value(self, value: Any, path: _Path, depth: int) -> None:
        limits = self.limits
        kind = type(value)
        if kind in _PLAIN:
            return
        if depth > limits.max_depth:
            self.add(path, f"nesting depth exceeds the limit of {limits.max_depth}")
        elif isinstance(value, float):
            if not math.isfinite(value):
                self.add(path, f"number {value!r} is not finite (NaN and Infinity are not JSON)")
        elif isinstance(value, str):
            if len(value) > limits.max_string:
                self.add(path, f"string of {len(value)} characters, over the limit of {limits.max_string}")
        elif isinstance(value, dict):
            for key, item in value.items():
                if len(key) > limits.max_string:
                    self.add(path, f"key of {len(key)} characters, over the limit of {limits.max_string}")
                self.value(item, (*path, key), depth + 1)
        elif isinstance(value, list):
            if len(value) > limits.max_list:
                self.add(path, f"list of {len(value)} items, over the limit of {limits.max_list}")
                return
            for i, item in enumerate(value):
                self.value(item, (*path, i), depth + 1)
