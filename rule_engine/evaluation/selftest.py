"""Run a bundle's own ``tests`` against its compiled table."""

from __future__ import annotations

from rule_engine.bundle.models import RuleBundle
from rule_engine.errors import BundleTestFailure, Problem, RuleEvaluationError
from rule_engine.evaluation.table import RuleTable

__all__ = ["run_bundle_tests"]


def run_bundle_tests(bundle: RuleBundle, table: RuleTable | None = None) -> None:
    """Raise :class:`BundleTestFailure` naming every test whose decision is not the expected one."""
    compiled = table if table is not None else RuleTable.from_bundle(bundle)
    problems: list[Problem] = []
    for index, test in enumerate(bundle.tests):
        expect = test.expect
        try:
            decision = compiled.evaluate(test.event)
        except RuleEvaluationError as exc:
            problems.append(Problem(f"tests[{index}]", f"test {test.name!r} failed: evaluation error: {exc}"))
            continue
        wrong = decision.decision != expect.decision or (
            expect.rule_id is not None and decision.rule_id != expect.rule_id
        )
        if wrong:
            want = f"{expect.decision!r}" + (f" by rule {expect.rule_id!r}" if expect.rule_id else "")
            got = f"{decision.decision!r}" + (
                f" by rule {decision.rule_id!r}" if decision.rule_id else " (no rule matched)"
            )
            problems.append(Problem(f"tests[{index}]", f"test {test.name!r} failed: expected {want}, got {got}"))
    if problems:
        raise BundleTestFailure(problems)
