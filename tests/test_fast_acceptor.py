"""The fast acceptor (issue 14, prepare): it only ever accepts what the models accept, built alike.

``parse_bundle`` tries :func:`rule_engine.bundle.trusted.accepted_bundle` first and validates with
the pydantic models whenever it defers. These tests compare the two on valid, near-valid and
hostile documents: the same bundle (every field, the fields set, the canonical text and digest) or
the same rejection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rule_engine.bundle import models
from rule_engine.bundle.jsontext import prechecked_bytes
from rule_engine.bundle.models import DEFAULT_LIMITS, BundleLimits, RuleBundle, parse_bundle
from rule_engine.bundle.trusted import accepted_bundle
from rule_engine.errors import BundleValidationError
from tests._support_deployment import mini_bundle
from tests.strategies import bundle_like_documents, conditions, json_values, mutated_documents

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "bundles").glob("*.json"))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _by_models(text: str | bytes, limits: BundleLimits = DEFAULT_LIMITS) -> RuleBundle | str:
    """What the models alone make of ``text``: the bundle, or the rejection's message."""
    try:
        raw = prechecked_bytes(text, limits)
        with models.gc_paused():
            return models._validated_by_models(raw, limits)
    except BundleValidationError as exc:
        return str(exc)


def _dumped(bundle: RuleBundle) -> Any:
    return bundle.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _assert_same(text: str | bytes, limits: BundleLimits = DEFAULT_LIMITS) -> bool:
    """parse_bundle gives what the models give; True when the fast acceptor took it."""
    expected = _by_models(text, limits)
    try:
        got: RuleBundle | str = parse_bundle(text, limits=limits)
    except BundleValidationError as exc:
        got = str(exc)
    if isinstance(expected, str) or isinstance(got, str):
        assert got == expected
        return False
    assert got == expected
    assert _dumped(got) == _dumped(expected)
    assert got.canonical == expected.canonical
    assert got.digest == expected.digest
    assert repr(got) == repr(expected)
    for mine, theirs in zip(got.rules, expected.rules, strict=True):
        assert mine.model_fields_set == theirs.model_fields_set
        assert mine.then.model_fields_set == theirs.then.model_fields_set
    raw = text.encode() if isinstance(text, str) else text
    return accepted_bundle(raw, limits) is not None


_outcomes = st.fixed_dictionaries(
    {"decision": st.sampled_from(["deny", "allow", " ", "x\u202e"])},
    optional={
        "reason": st.text(max_size=5) | st.none(),
        "params": st.dictionaries(st.text(max_size=3), json_values, max_size=2) | st.none(),
    },
)
_rules = st.fixed_dictionaries(
    {"then": _outcomes, "id": st.sampled_from(["r", "r2", " ", "", "a\u0007"])},
    optional={
        "priority": st.integers(-5, 5) | st.sampled_from([True, 1.0, 10**30, None]),
        "description": st.text(max_size=5) | st.none(),
        "agents": st.lists(st.sampled_from(["a", "b", ""]), max_size=2) | st.none(),
        "flows": st.lists(st.sampled_from(["f", "g"]), min_size=1, max_size=2) | st.none(),
        "when": conditions | st.none() | st.just({"all": []}) | st.just({"field": "a..b", "op": "exists"}),
    },
)
_documents = st.fixed_dictionaries(
    {"bundle_id": st.sampled_from(["b", "b\n", "b c", "b.1"]), "version": st.sampled_from(["1", ""])},
    optional={
        "rules": st.lists(_rules, max_size=3),
        "default": _outcomes | st.none(),
        "on_error": _outcomes,
        "tests": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["t", ""]), "event": st.just({"x": 1}), "expect": st.just({"decision": "d"})}
            ),
            max_size=2,
        ),
    },
)


@FUZZ
@given(_documents)
def test_generated_documents_are_judged_alike(document: dict[str, Any]) -> None:
    """Valid or not, a bundle-shaped document gives the same bundle or the same rejection both ways."""
    _assert_same(json.dumps(document, ensure_ascii=False))


@FUZZ
@given(bundle_like_documents)
def test_bundle_like_documents_are_judged_alike(document: dict[str, Any]) -> None:
    """Real keys with random values: the same answer both ways."""
    _assert_same(json.dumps(document, allow_nan=True))


@FUZZ
@given(st.data())
def test_mutated_valid_bundles_are_judged_alike(data: st.DataObject) -> None:
    """A valid bundle after random edits (dropped, duplicated, retyped keys): the same answer both ways."""
    text = data.draw(mutated_documents(mini_bundle()))
    _assert_same(text)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_the_shipped_bundles_take_the_fast_path(path: Path) -> None:
    """Every valid shipped bundle is accepted by the fast acceptor and built as the models build it."""
    try:
        parse_bundle(path.read_bytes())
    except BundleValidationError:
        pytest.skip("an invalid example bundle (covered by the generated cases)")
    assert _assert_same(path.read_bytes())


def test_a_valid_bundle_with_tests_and_custom_limits_takes_the_fast_path() -> None:
    """The common valid bundle is accepted by the fast path (so the comparisons above are not vacuous)."""
    text = json.dumps(mini_bundle())
    assert _assert_same(text)
    assert _assert_same(text, BundleLimits(max_rules=5))
    assert not _assert_same(text, BundleLimits(max_rules=0))  # over a custom limit: the models report it


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda t: t.replace('"deny-x"', '"deny-x","id":"deny-x"'), id="duplicate-key"),
        pytest.param(lambda t: t.replace('"value":1', '"value":NaN'), id="nan-literal"),
        pytest.param(lambda t: t.replace('"value":1', '"value":1e400'), id="infinite-number"),
        pytest.param(lambda t: t.replace('"x is 1"', '"x \\ud800"'), id="lone-surrogate"),
        pytest.param(lambda t: t.replace('"x is 1"', '"x \\ud83d\\ude00"'), id="surrogate-pair"),
        pytest.param(lambda t: t.replace('"priority":1', '"priority":true'), id="bool-priority"),
        pytest.param(lambda t: t.replace('"priority":1', '"priority":1.0'), id="float-priority"),
        pytest.param(lambda t: t.replace('"mini"', '"mini\\n"'), id="bundle-id-newline"),
        pytest.param(lambda t: t.replace('"deny-x"', '"deny\\u202ex"'), id="bidi-rule-id"),
        pytest.param(
            lambda t: t.replace('{"field":"x","op":"eq","value":1}', '{"all":[{"field":"x","op":"exists"}],"x":1}'),
            id="all-with-extra-key",
        ),
        pytest.param(
            lambda t: t.replace('"op":"eq"', '"op":"matches"').replace('"value":1', '"value":"("'), id="bad-regex"
        ),
        pytest.param(lambda t: t.replace('"op":"eq"', '"op":"in"'), id="in-without-list"),
        pytest.param(lambda t: t.replace('"field":"x"', '"field":".x"'), id="bad-path"),
    ],
)
def test_edge_cases_are_judged_alike(edit: Any) -> None:
    """Inputs the standard library's parser and the models' parser might see differently: the same answer."""
    text = edit(json.dumps(mini_bundle(), separators=(",", ":")))
    assert text != json.dumps(mini_bundle(), separators=(",", ":"))
    raw = text.encode()
    if accepted_bundle(raw, DEFAULT_LIMITS) is not None:
        assert isinstance(_by_models(text), RuleBundle)
    _assert_same(text)
