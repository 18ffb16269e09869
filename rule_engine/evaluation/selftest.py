"""Run a bundle's own ``tests`` against its compiled table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rule_engine.bundle.models import RuleBundle
from rule_engine.errors import BundleTestFailure, Problem, RuleEvaluationError
from rule_engine.evaluation.table import RuleTable

__all__ = ["BundleTestResult", "bundle_test_results", "run_bundle_tests"]


@dataclass(frozen=True, slots=True)
class BundleTestResult:
    """One bundle test's outcome: expected and actual decision, and the rule that decided (``opa test -v``)."""

    index: int
    name: str
    passed: bool
    expected_decision: str
    expected_rule_id: str | None
    decision: str | None
    rule_id: str | None  # the rule that decided (None: the default decision)
    error: str | None = None

    @property
    def message(self) -> str:
        """Why it failed ("" when it passed)."""
        if self.passed:
            return ""
        if self.error is not None:
            return f"test {self.name!r} failed: evaluation error: {self.error}"
        want = f"{self.expected_decision!r}" + (f" by rule {self.expected_rule_id!r}" if self.expected_rule_id else "")
        got = f"{self.decision!r}" + (f" by rule {self.rule_id!r}" if self.rule_id else " (no rule matched)")
        return f"test {self.name!r} failed: expected {want}, got {got}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``validate -v --json``)."""
        return {
            "name": self.name,
            "passed": self.passed,
            "expected": {"decision": self.expected_decision, "rule_id": self.expected_rule_id},
            "actual": {"decision": self.decision, "rule_id": self.rule_id},
            "error": self.error,
        }


def bundle_test_results(bundle: RuleBundle, table: RuleTable | None = None) -> list[BundleTestResult]:
    """Every test of ``bundle`` run against its table, in order, passed or not."""
    compiled = table if table is not None else RuleTable.from_bundle(bundle)
    results: list[BundleTestResult] = []
    for index, test in enumerate(bundle.tests):
        expect = test.expect
        try:
            decision = compiled.evaluate(test.event)
        except RuleEvaluationError as exc:
            results.append(
                BundleTestResult(index, test.name, False, expect.decision, expect.rule_id, None, exc.rule_id, str(exc))
            )
            continue
        wrong = decision.decision != expect.decision or (
            expect.rule_id is not None and decision.rule_id != expect.rule_id
        )
        results.append(
            BundleTestResult(
                index, test.name, not wrong, expect.decision, expect.rule_id, decision.decision, decision.rule_id
            )
        )
    return results


def run_bundle_tests(bundle: RuleBundle, table: RuleTable | None = None) -> None:
    """Raise :class:`BundleTestFailure` naming every test whose decision is not the expected one."""
    problems = [Problem(f"tests[{r.index}]", r.message) for r in bundle_test_results(bundle, table) if not r.passed]
    if problems:
        raise BundleTestFailure(problems)
