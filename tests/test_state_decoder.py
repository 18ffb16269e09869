"""The state decoder a store handle keeps: it reuses the records of versions that did not change, and
decodes everything else exactly as ``decode_state`` does (same state, same errors), whatever it saw before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rule_engine import DeploymentManager
from rule_engine.control.strategies import Canary
from rule_engine.errors import StoreError
from rule_engine.stores.integrity import StateDecoder, decode_state
from rule_engine.stores.memory import MemoryStore
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2


def _history() -> list[str]:
    """The stored documents of a short history: prepares, activations, a canary, a rollback."""
    store = MemoryStore()
    manager = DeploymentManager.open(store, follow=False)
    docs = []

    def keep() -> None:
        docs.append(json.dumps(store.load().to_dict()))

    for bundle in (GATEWAY_V1, GATEWAY_V2, GATEWAY_V1):
        version_id = manager.prepare_deployment(bundle)
        keep()
        manager.activate_deployment(version_id)
        keep()
    canary = manager.prepare_deployment(GATEWAY_V2, Canary(stages=(10, 50, 100)))
    keep()
    manager.activate_deployment(canary)
    keep()
    manager.advance_rollout()
    keep()
    manager.rollback(reason="test")
    keep()
    return docs


DOCS = _history()


def test_it_decodes_a_history_as_decode_state_does_and_reuses_what_did_not_change() -> None:
    decoder = StateDecoder()
    previous = None
    for revision, doc in enumerate(DOCS, start=1):
        state = decoder(doc, revision, "here")
        assert state == decode_state(doc, revision, "here")
        if previous is not None:
            before = json.loads(DOCS[revision - 2])["versions"]
            after = json.loads(doc)["versions"]
            unchanged = {v["version_id"] for v in after if v in before}
            for version_id, record in state.versions.items():
                assert (record is previous.versions.get(version_id)) == (version_id in unchanged)
        previous = state


def test_a_record_that_turned_bad_is_refused_even_though_its_good_form_was_decoded_before() -> None:
    decoder = StateDecoder()
    decoder(DOCS[-1], 1, "here")
    data = json.loads(DOCS[-1])
    data["versions"][0]["digest"] = 7
    with pytest.raises(StoreError, match="digest is not text"):
        decoder(json.dumps(data), 2, "here")
    assert decoder(DOCS[-1], 3, "here") == decode_state(DOCS[-1], 3, "here")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _mutate(data: dict[str, Any], path: list[int | str], value: Any) -> None:
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _paths(value: Any, prefix: list[int | str]) -> list[list[int | str]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, [*prefix, key])
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, [*prefix, index])
    return found


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(DOCS))), st.data(), _JSON)
def test_a_primed_decoder_agrees_with_decode_state_on_any_damaged_document(index: int, data: Any, value: Any) -> None:
    """Prime the decoder with a good document, damage one value of it anywhere: both decode alike."""
    doc = DOCS[index]
    original = json.loads(doc)
    path = data.draw(st.sampled_from(_paths(original, [])))
    _mutate(original, path, value)
    damaged = json.dumps(original)
    decoder = StateDecoder()
    decoder(doc, 1, "here")
    outcome = _outcome(lambda: decode_state(damaged, 2, "here"))
    assert _outcome(lambda: decoder(damaged, 2, "here")) == outcome


def _outcome(decode: Any) -> Any:
    """The decoded state, or the StoreError's message."""
    try:
        return decode()
    except StoreError as exc:
        return f"StoreError: {exc}"


def test_memory_is_bounded_by_the_last_document() -> None:
    decoder = StateDecoder()
    for revision, doc in enumerate(DOCS, start=1):
        decoder(doc, revision, "here")
    assert set(decoder._memo) == {v["version_id"] for v in json.loads(DOCS[-1])["versions"]}


def test_stores_decode_with_their_own_decoder(tmp_path: Path) -> None:
    from rule_engine.stores.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "s.db", create=True)
    manager = DeploymentManager.open(store, follow=False)
    manager.activate_deployment(manager.prepare_deployment(GATEWAY_V1))
    first = store.load()
    manager.prepare_deployment(GATEWAY_V2)
    second = store.load()
    active = first.active
    assert active is not None
    assert second.versions[active] is first.versions[active]
