"""Every file of the malformed corpus is rejected with a problem at the right place, saying what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rule_engine.bundle.models import load_bundle
from rule_engine.errors import BundleTestFailure, BundleValidationError, Problem
from rule_engine.evaluation.selftest import run_bundle_tests

CORPUS = Path(__file__).parent / "cases" / "malformed"
EXPECTED: dict[str, dict[str, str]] = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
FAILS_ITS_OWN_TESTS = {"44-test-expectation-fails.json"}


def _at(path: str, where: str) -> bool:
    """Whether ``path`` is ``where`` or inside it (at a segment boundary); ``$`` contains everything."""
    if where == "$" or path == where:
        return True
    return path.startswith(where) and path[len(where)] in ".["


def _names_the_place(problems: tuple[Problem, ...], where: str, says: str) -> bool:
    return any(_at(p.path, where) and says.lower() in str(p).lower() for p in problems)


def test_expectations_cover_the_corpus_exactly() -> None:
    """expected.json has one entry per corpus file, so no file goes untested."""
    files = {path.name for path in CORPUS.iterdir() if path.name != "expected.json"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - FAILS_ITS_OWN_TESTS))
def test_malformed_file_is_rejected_at_its_place(name: str) -> None:
    """load_bundle raises BundleValidationError (and nothing else) with a problem at the expected place."""
    expected = EXPECTED[name]
    with pytest.raises(BundleValidationError) as caught:
        load_bundle(CORPUS / name)
    assert type(caught.value) is BundleValidationError
    assert caught.value.problems
    assert _names_the_place(caught.value.problems, expected["where"], expected["says"]), caught.value.problems
    assert str(CORPUS / name) in str(caught.value)


@pytest.mark.parametrize("name", sorted(FAILS_ITS_OWN_TESTS))
def test_bundle_failing_its_own_test_is_rejected_when_tests_run(name: str) -> None:
    """A schema-valid bundle whose test fails loads, then run_bundle_tests rejects it naming the test."""
    expected = EXPECTED[name]
    bundle = load_bundle(CORPUS / name)
    with pytest.raises(BundleTestFailure) as caught:
        run_bundle_tests(bundle)
    assert _names_the_place(caught.value.problems, expected["where"], expected["says"]), caught.value.problems
    (problem,) = caught.value.problems
    assert "expected 'allow'" in problem.message
    assert "got 'deny'" in problem.message


def test_place_matching_respects_segment_boundaries() -> None:
    """The corpus matcher does not take rules[1] for a prefix of rules[10] (so it can fail)."""
    assert _at("rules[1].when", "rules[1]")
    assert not _at("rules[10].when", "rules[1]")
    assert not _at("rules[0].whenever", "rules[0].when")
    assert _at("anything", "$")
