"""The trusted path (issue 14): a canonical text that matches its recorded digest is built without validating again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rule_engine.bundle.models import RuleBundle, canonical_json, parse_bundle
from rule_engine.bundle.trusted import text_digest
from rule_engine.errors import BundleValidationError, StoreError
from rule_engine.stores.integrity import checked_bundle
from tests import _support_stores as kit
from tests._support_deployment import mini_bundle
from tests.strategies import conditions, json_values

BUNDLES = sorted((Path(__file__).resolve().parent.parent / "bundles").glob("gateway-v*.json"))


def _dumped(bundle: RuleBundle) -> Any:
    return bundle.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _same(trusted: RuleBundle, validated: RuleBundle) -> None:
    assert trusted == validated
    assert _dumped(trusted) == _dumped(validated)  # the same fields set, at every level
    assert trusted.canonical == validated.canonical
    assert trusted.digest == validated.digest
    assert repr(trusted) == repr(parse_bundle(validated.canonical))
    for mine, theirs in zip(trusted.rules, validated.rules, strict=True):
        assert mine.model_fields_set == theirs.model_fields_set


_outcomes = st.fixed_dictionaries(
    {"decision": st.sampled_from(["deny", "allow"])},
    optional={
        "reason": st.text(max_size=5),
        "params": st.dictionaries(st.text(max_size=3), json_values, max_size=2),
    },
)
_rules = st.fixed_dictionaries(
    {"then": _outcomes},
    optional={
        "priority": st.integers(-5, 5),
        "description": st.text(max_size=5),
        "agents": st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2, unique=True),
        "flows": st.lists(st.sampled_from(["f", "g"]), min_size=1, max_size=2, unique=True),
        "when": conditions,
    },
)


@given(st.lists(_rules, min_size=1, max_size=4), st.one_of(st.none(), _outcomes), st.booleans())
def test_the_trusted_path_builds_the_validated_bundle(rules: list[Any], default: Any, with_test: bool) -> None:
    """For any valid bundle, parse_bundle(canonical, trusted_digest=digest) equals the validated bundle."""
    document: dict[str, Any] = {
        "bundle_id": "b",
        "version": "1",
        "rules": [{"id": f"r{i}", **rule} for i, rule in enumerate(rules)],
    }
    if default is not None:
        document["default"] = default
    if with_test:
        document["tests"] = [{"name": "t", "event": {"x": 1}, "expect": {"decision": "deny", "rule_id": "r0"}}]
    try:
        validated = parse_bundle(json.dumps(document))
    except BundleValidationError:
        assume(False)
        raise
    _same(parse_bundle(validated.canonical, trusted_digest=validated.digest), validated)


@pytest.mark.parametrize("path", BUNDLES, ids=lambda p: p.name)
def test_the_shipped_bundles_build_alike_on_the_trusted_path(path: Path) -> None:
    """Every shipped bundle built on the trusted path equals its validated form."""
    validated = parse_bundle(path.read_bytes())
    _same(parse_bundle(validated.canonical.encode(), trusted_digest=validated.digest), validated)


def test_the_trusted_path_refuses_a_text_whose_digest_differs() -> None:
    """A text that is not the one the digest names is refused, even a valid bundle, and never built."""
    bundle = parse_bundle(json.dumps(mini_bundle()))
    text = canonical_json(bundle)
    changed = text.replace('"decision":"deny"', '"decision":"allow"')
    assert changed != text
    with pytest.raises(BundleValidationError, match="not the trusted digest"):
        parse_bundle(changed, trusted_digest=bundle.digest)
    pretty = json.dumps(json.loads(text), indent=2)  # the same bundle, not its canonical text
    with pytest.raises(BundleValidationError, match="not the trusted digest"):
        parse_bundle(pretty, trusted_digest=bundle.digest)


def test_a_trusted_text_that_is_not_a_bundle_is_an_error_not_a_crash() -> None:
    """A text whose digest matches but that is not a bundle's shape raises BundleValidationError."""
    for text in ("[1, 2]", '{"bundle_id": "b"}', "{", '{"bundle_id":"b","version":"1","rules":[{"id":"r"}]}'):
        with pytest.raises(BundleValidationError, match="not a bundle"):
            parse_bundle(text, trusted_digest=text_digest(text))


def test_checked_bundle_takes_the_trusted_path_only_for_the_recorded_text() -> None:
    """A stored text equal to the recorded canonical text is trusted; any other is validated and digest-compared."""
    bundle = parse_bundle(json.dumps(mini_bundle()))
    record = kit.record("mini@1.0.0+abc.1", digest=bundle.digest)
    text = canonical_json(bundle)
    assert text_digest(text) == bundle.digest
    assert checked_bundle(record, text) == bundle
    pretty = json.dumps(json.loads(text), indent=2)  # a non-canonical text of the same bundle: validated in full
    assert checked_bundle(record, pretty) == bundle
    with pytest.raises(StoreError, match="does not match its recorded digest"):
        checked_bundle(record, text.replace('"decision":"deny"', '"decision":"allow"'))
