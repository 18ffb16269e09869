"""Checks that what a store hands back is the store, state, bundle and audit it claims to be.

Every backend and every reader of a store share these rules:

- **Continuity** (:func:`check_continuity`): a store has an identity, a random id written when it was
  created; its revision only grows. A reader that has seen ``(identity, revision)`` refuses a later
  read with another identity (the store was deleted and recreated, or replaced) or a lower revision
  (restored from an older backup): it keeps what it had and says why.
- **Readable state** (:func:`decode_state`): a stored state document that does not decode into a
  consistent :class:`ControlState` is a :class:`StoreError`, never an ``AttributeError`` or
  ``ValueError`` from deep inside.
- **Bundles match their digests** (:func:`checked_bundle`, :func:`load_checked_bundle`): a bundle read
  back whose text hashes to the digest recorded for its version is the canonical text validated at
  prepare, built on the trusted path (no second validation); any other text is validated in full and
  its canonical digest compared with the recorded one (a mismatch is a :class:`StoreError`).
- **The audit is a hash chain** (:func:`audit_hash`, :func:`verify_chain`): each entry's hash covers
  the entry and the hash of its predecessor, so changing, removing or inserting an entry breaks the
  chain from that entry on (see ``docs/stores.md``, "The audit hash chain").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from rule_engine.bundle.models import RuleBundle, parse_bundle
from rule_engine.bundle.trusted import text_digest
from rule_engine.control.records import AuditEntry, ControlState, VersionRecord
from rule_engine.errors import BundleValidationError, StoreError

if TYPE_CHECKING:
    from rule_engine.stores.base import StateStore

__all__ = [
    "GENESIS",
    "AuditCheck",
    "AuditRow",
    "StateDecoder",
    "StoreMark",
    "audit_hash",
    "chain_entries",
    "check_continuity",
    "checked_bundle",
    "decode_state",
    "load_checked_bundle",
    "meta_problem",
    "verify_chain",
]

GENESIS = ""  # the "previous hash" of the first entry of a chain

# What decoding hostile JSON into a ControlState can raise; each becomes a StoreError.
_DECODE_ERRORS = (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError)


# --- continuity -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreMark:
    """Which store a reader saw, and at which revision."""

    identity: str
    revision: int


def check_continuity(previous: StoreMark | None, current: StoreMark) -> str | None:
    """Why ``current`` must not be adopted by a reader that last saw ``previous``; None if it may be.

    A reader that gets a reason keeps the last state it had (a follower keeps serving it, stale,
    with this reason) and never adopts the other store: restarting the process adopts it.
    """
    if previous is None:
        return None
    if current.identity != previous.identity:
        return (
            f"the store was replaced or recreated: its identity is {current.identity!r}, "
            f"this process was using {previous.identity!r} (at revision {previous.revision}); "
            "refusing to adopt it (restart the process to use the new store)"
        )
    if current.revision < previous.revision:
        return (
            f"the store's revision went backwards from {previous.revision} to {current.revision} "
            "(restored from an older backup?); refusing to adopt it (restart the process to use it)"
        )
    return None


def meta_problem(revision: object, store_id: object, chain_from: object, head: object) -> str | None:
    """What is wrong with a stored meta row's values (None when they are well typed)."""
    return (
        "revision is not a non-negative integer" if not _is_count(revision, 0)
        else "store_id is not text" if not isinstance(store_id, str) or not store_id
        else "audit_chain_from is not a positive integer" if not _is_count(chain_from, 1)
        else "audit_head is not text" if not isinstance(head, str | None)
        else None
    )  # fmt: skip


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# --- state documents ------------------------------------------------------------------------------


def decode_state(text: object, revision: int, where: str) -> ControlState:
    """The stored state document ``text`` as a consistent :class:`ControlState` at ``revision``.

    Raises :class:`StoreError` naming ``where`` for anything that is not one: not JSON, not an
    object, missing or mistyped fields, an active version or rollout that names no known version.
    """
    return StateDecoder()(text, revision, where)


class StateDecoder:
    """:func:`decode_state` for one store handle, reusing the records of versions that did not change.

    A follower decodes the whole state document at every pickup, though a commit changes one or two
    of its versions. Each decoded :class:`VersionRecord` (frozen) is kept with the JSON object it came
    from; the next document's version whose object is equal (compared in C, no decode) gets the same
    record, already checked. Only the last document's records are kept: memory is bounded by the
    versions one state holds. Safe across threads: a call replaces the memo with one assignment, and a
    race only costs a decode.
    """

    __slots__ = ("_memo",)

    def __init__(self) -> None:
        self._memo: dict[str, tuple[Any, VersionRecord]] = {}

    def __call__(self, text: object, revision: int, where: str) -> ControlState:
        """Decode ``text`` as :func:`decode_state` does (same checks, same errors)."""
        memo, fresh = self._memo, {}

        def record(raw: Any) -> VersionRecord:
            version_id = raw.get("version_id") if isinstance(raw, dict) else None
            known = memo.get(version_id) if isinstance(version_id, str) else None
            if known is not None and known[0] == raw:
                decoded = known[1]
            else:
                decoded = VersionRecord.from_dict(raw)
                _check_record(decoded)
            fresh[decoded.version_id] = (raw, decoded)
            return decoded

        try:
            if not isinstance(text, str):
                raise TypeError(f"the state document is {type(text).__name__}, not text")
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError(f"the state document is a JSON {type(data).__name__}, not an object")
            state = ControlState.from_dict(data, record)
            _check_state(state)
        except _DECODE_ERRORS as exc:
            raise StoreError(f"the state stored in {where} is unreadable: {exc}") from exc
        self._memo = fresh
        return replace(state, revision=revision)


def _check_record(record: VersionRecord) -> None:
    version_id = record.version_id
    for name in ("version_id", "bundle_id", "bundle_version", "digest", "deployed_by"):
        if not isinstance(getattr(record, name), str):
            raise TypeError(f"version {version_id!r}: {name} is not text")
    for name in ("activated_at", "finished_at", "converged_at"):
        if not isinstance(getattr(record, name), int | float | None):
            raise TypeError(f"version {version_id!r}: {name} is not a time")
    if not isinstance(record.failure_reason, str | None):
        raise TypeError(f"version {version_id!r}: failure_reason is not text")


def _check_state(state: ControlState) -> None:
    """What holds across the records (each one was checked by :func:`_check_record` when decoded)."""
    if not all(isinstance(v, str) for v in state.lineage):
        raise TypeError("lineage holds something that is not a version id")
    rollout = state.rollout
    if rollout is not None:
        if not isinstance(rollout.salt, str):
            raise TypeError("the rollout's salt is not text")
        if not 0 <= rollout.share_bp <= 10_000 or rollout.stage_index < 0:
            raise ValueError(
                f"the rollout's share ({rollout.share_bp} bp) or stage ({rollout.stage_index}) is out of range"
            )
    named: list[str | None] = [state.active]
    if state.rollout is not None:
        named += [state.rollout.candidate, state.rollout.stable]
    for named_id in named:
        if named_id is not None and named_id not in state.versions:
            raise ValueError(f"the state names version {named_id!r}, which it does not hold")


# --- bundles --------------------------------------------------------------------------------------


def checked_bundle(record: VersionRecord, text: object) -> RuleBundle:
    """Parse a stored bundle and check its digest against ``record.digest``.

    Raises :class:`StoreError` naming the version (and both digests on a mismatch): a bundle row
    that was changed, truncated or replaced is never served.
    """
    if not isinstance(text, str):
        raise StoreError(f"the stored bundle of {record.version_id!r} is {type(text).__name__}, not text")
    try:
        if text_digest(text) == record.digest:  # the canonical text validated at prepare: the trusted path
            return parse_bundle(text, trusted_digest=record.digest)
        bundle = parse_bundle(text)  # not canonical (or changed): validate in full, then compare digests
    except BundleValidationError as exc:
        raise StoreError(f"the stored bundle of {record.version_id!r} is not a valid bundle: {exc}") from exc
    if bundle.digest != record.digest:
        raise StoreError(
            f"the stored bundle of {record.version_id!r} does not match its recorded digest: "
            f"recorded {record.digest}, stored bundle has {bundle.digest} (the store was tampered with)"
        )
    return bundle


def load_checked_bundle(store: StateStore, record: VersionRecord) -> RuleBundle | None:
    """The version's bundle read from ``store`` and checked by :func:`checked_bundle`; None if not stored."""
    text = store.bundle_json(record.version_id)
    return None if text is None else checked_bundle(record, text)


# --- the audit hash chain -------------------------------------------------------------------------


def audit_hash(previous: str, entry: AuditEntry, revision: int) -> str:
    """sha256 (hex) of ``previous`` + newline + the entry's canonical JSON (see docs/stores.md)."""
    body = {
        "seq": entry.seq,
        "at": float(entry.at),
        "action": entry.action,
        "version_id": entry.version_id,
        "from_state": entry.from_state,
        "to_state": entry.to_state,
        "actor": entry.actor,
        "reason": entry.reason,
        "strategy": entry.strategy,
        "revision": revision,
    }
    if entry.origin is not None:  # hashed when recorded (entries from before origins existed hash as they did)
        body["origin"] = entry.origin
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{previous}\n{text}".encode("ascii")).hexdigest()


def chain_entries(
    entries: Iterable[AuditEntry], last_seq: int, head: str | None, revision: int
) -> tuple[list[tuple[AuditEntry, str]], str | None]:
    """Number ``entries`` after ``last_seq`` and chain them after ``head``, as committed in ``revision``.

    Returns each numbered entry with its hash, and the chain's new head (``head`` if there are none).
    """
    chained: list[tuple[AuditEntry, str]] = []
    previous = head or GENESIS
    for entry in entries:
        last_seq += 1
        numbered = replace(entry, seq=last_seq)
        previous = audit_hash(previous, numbered, revision)
        chained.append((numbered, previous))
    return chained, (previous if chained else head)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored audit entry as read back, with the revision it was committed in and its hash."""

    entry: AuditEntry
    revision: int
    hash: str | None

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> AuditRow:
        """Build from raw stored columns, checking their types (raises ValueError / TypeError)."""
        seq, at, revision, digest = columns["seq"], columns["at"], columns["revision"], columns["hash"]
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(revision, int):
            raise TypeError("seq and revision must be integers")
        if not isinstance(at, int | float) or isinstance(at, bool):
            raise TypeError("at must be a number")
        for name in ("action", "version_id", "to_state", "actor", "reason"):
            if not isinstance(columns[name], str):
                raise TypeError(f"{name} must be text")
        for name in ("from_state", "strategy", "origin"):
            if not isinstance(columns.get(name), str | None):
                raise TypeError(f"{name} must be text or null")
        if not isinstance(digest, str | None):
            raise TypeError("hash must be text or null")
        entry = AuditEntry(
            at=float(at), action=columns["action"], version_id=columns["version_id"],
            from_state=columns["from_state"], to_state=columns["to_state"], actor=columns["actor"],
            reason=columns["reason"], strategy=columns["strategy"], seq=seq, origin=columns.get("origin"),
        )  # fmt: skip
        return cls(entry, revision, digest)


@dataclass(frozen=True, slots=True)
class AuditCheck:
    """The verdict of :meth:`StateStore.verify_audit`.

    ``ok`` when every entry from the start of the chain hashes to what is stored and the chain ends
    at the head the store recorded. ``checked`` entries were verified; ``unhashed`` older entries
    predate the chain (written before the store was upgraded) and are not covered. On failure,
    ``first_bad_seq`` is the first entry that does not verify and ``reason`` says why. ``head`` is
    the hash of the last entry: keep a copy elsewhere to detect a rewrite of the whole chain.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""
    head: str | None = None
    unhashed: int = 0

    def summary(self) -> str:
        """One line for people (what ``rule-engine audit verify`` prints)."""
        if not self.ok:
            return f"audit chain broken at entry {self.first_bad_seq}: {self.reason}"
        older = f" ({self.unhashed} older entries not covered)" if self.unhashed else ""
        return f"audit chain ok: {self.checked} entries checked{older}, head {self.head or 'none (empty)'}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``--json``)."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "head": self.head,
            "unhashed": self.unhashed,
        }


def verify_chain(rows: Iterable[AuditRow | BaseException], chain_from: int, head: str | None) -> AuditCheck:
    """Check stored audit rows (oldest first) against the chain that starts at seq ``chain_from``.

    ``rows`` may yield an exception in place of a row whose columns did not decode; that row is
    the first bad one. ``head`` is the last hash the store recorded (None for an empty chain).
    Reads each row once and keeps O(1) of them.
    """
    previous, checked, unhashed, last_seq = GENESIS, 0, 0, chain_from - 1
    for row in rows:
        if isinstance(row, BaseException):
            return AuditCheck(False, checked, last_seq + 1, f"entry after seq {last_seq} is unreadable: {row}")
        seq = row.entry.seq
        assert seq is not None
        if seq < chain_from:
            unhashed += 1
            continue
        if row.hash is None:
            return AuditCheck(False, checked, seq, f"entry {seq} carries no hash (written outside the store?)")
        expected = audit_hash(previous, row.entry, row.revision)
        if row.hash != expected:
            return AuditCheck(
                False,
                checked,
                seq,
                f"entry {seq} does not match its hash: it, or an entry before it, was changed, removed or inserted",
            )
        previous, checked, last_seq = row.hash, checked + 1, seq
    tail = previous if checked else None
    if tail != head:
        return AuditCheck(
            False,
            checked,
            last_seq + 1,
            f"the chain ends at entry {last_seq} but the store recorded another last hash: entries were removed",
        )
    return AuditCheck(True, checked, head=tail, unhashed=unhashed)
