"""Rows of the PostgreSQL store, in and out: every value read back is checked before it is used.

A row that does not decode (a mistyped column, a ``NULL`` where a number belongs, a state document
that is not a consistent :class:`ControlState`) becomes a :class:`StoreError` naming the store, never
an ``AttributeError`` or ``TypeError`` from deep inside (see :mod:`rule_engine.stores.integrity`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rule_engine.errors import StoreError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.integrity import AuditRow, StoreMark, meta_problem

__all__ = [
    "AUDIT_COLUMNS",
    "AUDIT_SELECT",
    "BUMP_REVISION",
    "FIRST_REVISION",
    "HEALTH_SELECT",
    "MAX_NOTIFY_BYTES",
    "META_COLUMNS",
    "META_SELECT",
    "STATE_UPSERT",
    "Meta",
    "audit_rows",
    "health_columns",
    "health_of",
    "meta_of",
    "notify_payload",
    "sha256",
]

MAX_NOTIFY_BYTES = 4000  # PostgreSQL's limit is 8000; the ids are a hint, the revision is what counts
META_COLUMNS = "d.revision, m.store_id, d.audit_chain_from, d.audit_head"
# The store's identity and one deployment's revision and chain bounds (NULLs: not committed yet).
META_SELECT = f"SELECT {META_COLUMNS} FROM meta m LEFT JOIN deployments d ON d.name = %s WHERE m.id = 1"
# A commit's revision step (0 rows: another commit came first), returning the meta columns and the
# store's last audit seq (seqs are global), read under the meta row's lock in the same round trip.
LAST_SEQ = "(SELECT coalesce(max(seq), 0) FROM audit)"
BUMP_REVISION = (
    "UPDATE deployments d SET revision = d.revision + 1 FROM meta m WHERE d.name = %s AND d.revision = %s"
    f" AND m.id = 1 RETURNING {META_COLUMNS}, {LAST_SEQ}"
)
FIRST_REVISION = (  # a deployment's first commit
    "INSERT INTO deployments AS d (name, revision, audit_chain_from) VALUES (%s, 1, 1)"
    " ON CONFLICT (name) DO NOTHING RETURNING d.revision, (SELECT store_id FROM meta WHERE id = 1),"
    f" d.audit_chain_from, d.audit_head, {LAST_SEQ}"
)
STATE_UPSERT = "INSERT INTO state (deployment, doc) VALUES (%s, %s::jsonb) ON CONFLICT (deployment) DO UPDATE SET doc = excluded.doc"
AUDIT_COLUMNS = (
    "seq", "at", "action", "version_id", "from_state", "to_state", "actor", "reason", "strategy", "origin"
)  # fmt: skip
AUDIT_SELECT = f"SELECT {', '.join(AUDIT_COLUMNS)}, revision, hash FROM audit WHERE deployment = %s"
HEALTH_SELECT = (
    "version_id, evaluations, errors, timeouts, latency_sum_us, histogram, decisions, rules, fallbacks, fallback_errors"
)


@dataclass(frozen=True, slots=True)
class Meta:
    """The meta row: which store, at which revision, and the audit chain's bounds."""

    mark: StoreMark
    chain_from: int
    head: str | None


def meta_of(row: Sequence[Any] | None, where: str) -> Meta:
    """The meta row ``(revision, store_id, audit_chain_from, audit_head)``, checked."""
    if row is None:
        raise StoreError(f"the meta row of {where} is missing: the store is corrupt (was it emptied by hand?)")
    revision, store_id, chain_from, head = row
    if revision is None and chain_from is None and head is None:
        revision, chain_from = 0, 1  # a deployment not committed yet
    problem = meta_problem(revision, store_id, chain_from, head)
    if problem is not None:
        raise StoreError(f"the meta row of {where} is corrupt: {problem}")
    return Meta(StoreMark(str(store_id), int(revision)), int(chain_from), head if isinstance(head, str) else None)


def audit_rows(rows: Iterable[Sequence[object]]) -> Iterator[AuditRow | BaseException]:
    """Stored audit rows (``AUDIT_SELECT`` order) as checked :class:`AuditRow`, or the error a row raised."""
    names = (*AUDIT_COLUMNS, "revision", "hash")
    for row in rows:
        try:
            yield AuditRow.from_columns(dict(zip(names, row, strict=True)))
        except (TypeError, ValueError) as exc:
            yield exc


def health_of(row: Sequence[Any], where: str) -> tuple[str, HealthCounts]:
    """A ``HEALTH_SELECT`` row as ``(version_id, counts)``, checked."""
    try:
        version_id, evaluations, errors, timeouts, latency, histogram, decisions, rules, fallbacks, fb_errors = row
        for name, value in (("evaluations", evaluations), ("errors", errors), ("timeouts", timeouts)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TypeError(f"{name} is not a non-negative integer")
        if not isinstance(decisions, Mapping) or not isinstance(rules, Mapping):
            raise TypeError("decisions and rules must be JSON objects")
        counts = HealthCounts(
            int(evaluations), int(errors), int(timeouts), float(latency),
            tuple(int(x) for x in histogram), {str(k): int(n) for k, n in decisions.items()},
            {str(k): int(n) for k, n in rules.items()}, int(fallbacks), int(fb_errors),
        )  # fmt: skip
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"stored health counters in {where} are corrupt: {exc}") from exc
    return str(version_id), counts


def health_columns(c: HealthCounts) -> tuple[object, ...]:
    """The column values of one health row (after its key), as the upserts take them."""
    return (
        c.evaluations,
        c.errors,
        c.timeouts,
        c.latency_sum_us,
        list(c.histogram),
        json.dumps(dict(c.decisions), separators=(",", ":")),
        json.dumps(dict(c.rules), separators=(",", ":")),
        c.fallbacks,
        c.fallback_errors,
    )


def notify_payload(revision: int, touched: Sequence[str], deployment: str = "") -> str:
    """``{"deployment": D, "revision": R, "ids": [...]}``, the ids cut (and ``"truncated": true``) past MAX_NOTIFY_BYTES."""
    ids: list[str] = []
    size = len(deployment.encode())
    head: dict[str, object] = {"deployment": deployment, "revision": revision}
    for version_id in dict.fromkeys(touched):
        size += len(version_id.encode()) + 4
        if size > MAX_NOTIFY_BYTES:
            return json.dumps({**head, "ids": ids, "truncated": True}, separators=(",", ":"))
        ids.append(version_id)
    return json.dumps({**head, "ids": ids}, separators=(",", ":"))


def sha256(text: str) -> str:
    """Hex sha256 of the text's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()
