"""The gc pause around a big parse or compile (issue 14): what it built is not swept by young collections after it."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator

import pytest

from rule_engine import RuleTable, parse_bundle
from rule_engine.bundle.models import gc_paused
from tests._support_deployment import mini_bundle


@pytest.fixture(autouse=True)
def _gc_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def _generation_of(obj: object) -> int | None:
    return next((g for g in range(3) if any(o is obj for o in gc.get_objects(generation=g))), None)


def test_what_a_pause_built_is_in_the_oldest_generation_after_it() -> None:
    """The survivors of a pause are moved to generation 2 as a whole: no young collection walks them."""
    with gc_paused():
        built = [[i] for i in range(1000)]
        assert not gc.isenabled()
    assert gc.isenabled()
    assert _generation_of(built) == 2
    assert _generation_of(built[-1]) == 2
    assert gc.get_count()[0] < 50  # the young generation starts empty again


def test_nested_pauses_promote_once_at_the_outermost_end() -> None:
    """An inner pause leaves the collector off; the outer one restores it."""
    with gc_paused():
        with gc_paused():
            inner = [[1]]
        assert not gc.isenabled()
        assert _generation_of(inner) == 0
    assert gc.isenabled()
    assert _generation_of(inner) == 2


def test_objects_the_application_froze_stay_frozen() -> None:
    """With objects frozen by the application (gc.freeze before a fork), the pause unfreezes nothing."""
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with gc_paused():
            built = [[2]]
        assert gc.get_freeze_count() == frozen
        assert _generation_of(built) == 0  # not promoted: ordinary young object
    finally:
        gc.unfreeze()


def test_a_disabled_collector_stays_disabled() -> None:
    """A caller that turned the collector off keeps it off, and nothing is moved."""
    gc.disable()
    with gc_paused():
        built = [[3]]
    assert not gc.isenabled()
    assert _generation_of(built) == 0


def test_a_compiled_table_is_in_the_oldest_generation() -> None:
    """A table built by RuleTable.from_bundle (under its pause) is not left for young collections."""
    table = RuleTable.from_bundle(parse_bundle(json.dumps(mini_bundle())))
    assert _generation_of(table.rules) == 2
