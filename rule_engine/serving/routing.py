"""Consistent-hash routing, algorithm version 1 (specified in docs/routing.md).

A request's key is hashed once, with unsigned 32-bit murmur3 (seed 0): that is the *request hash*,
which callers may compute ahead with :func:`compute_request_hash`. Each rollout then salts it with
two 64-bit integers derived from the rollout's salt string, so every rollout picks its own cohort::

    a, b   = sha256(salt) bytes 0..7 (big-endian, low bit forced to 1) and bytes 8..15
    mixed  = ((a * request_hash + b) mod 2**64) >> 32          # 0 .. 2**32-1
    bucket = (mixed * 10_000) >> 32                            # 0 .. 9_999 (basis points)
    the request goes to the candidate  <=>  bucket < candidate share in basis points

Only integer arithmetic is used, so any language reproduces it exactly; golden vectors in
``tests/cases/routing_v1.json`` hold the code to it. The multiply-add step is a member of the
multiply-add-shift universal family, so different salts give (nearly) independent cohorts, while for
one salt the cohort only grows as the share rises (a key in at 10% is in at 25%).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import mmh3

__all__ = [
    "ALGORITHM_VERSION",
    "BASIS_POINTS",
    "Salt",
    "bucket_of",
    "compute_request_hash",
    "goes_to_candidate",
    "percent_to_bp",
]

ALGORITHM_VERSION = 1
BASIS_POINTS = 10_000
_MASK64 = (1 << 64) - 1
_SEPARATOR = "\x1f"  # ASCII unit separator between key parts


def compute_request_hash(*parts: object) -> int:
    """The request hash of a routing key: unsigned 32-bit murmur3 (seed 0) of its UTF-8 bytes.

    One part that is ``str`` or ``bytes`` is hashed as is; several parts are converted with
    ``str()`` and joined with the ASCII unit separator (0x1F).
    """
    if len(parts) == 1:
        part = parts[0]
        if isinstance(part, str | bytes):
            return int(mmh3.hash(part, 0, False))
    return int(mmh3.hash(_SEPARATOR.join(map(str, parts)), 0, False))


@dataclass(frozen=True, slots=True)
class Salt:
    """The per-rollout salt: a text (the rollout's id) and the two integers derived from it."""

    text: str
    multiplier: int
    offset: int

    @classmethod
    def from_text(cls, text: str) -> Salt:
        """Derive the salt integers from ``text`` (sha256; see the module docstring)."""
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        multiplier = int.from_bytes(digest[0:8], "big") | 1
        offset = int.from_bytes(digest[8:16], "big")
        return cls(text, multiplier, offset)

    def bucket(self, request_hash: int) -> int:
        """The request's bucket, 0..9999, under this salt."""
        return bucket_of(request_hash, self)

    def limit(self, share_bp: int) -> int:
        """The 64-bit bound equivalent to ``bucket < share_bp``: ``mixed64 < limit``.

        ``bucket < s``  <=>  ``mixed < ceil(s * 2**32 / 10_000)``  <=>  ``mixed64 < that << 32``,
        which lets the hot path skip the shift and the multiplication by 10,000.
        """
        if share_bp <= 0:
            return 0
        if share_bp >= BASIS_POINTS:
            return 1 << 64
        return (-(-share_bp * (1 << 32) // BASIS_POINTS)) << 32


def bucket_of(request_hash: int, salt: Salt) -> int:
    """The bucket (0..9999) of a request hash under a rollout's salt."""
    mixed = ((salt.multiplier * request_hash + salt.offset) & _MASK64) >> 32
    return (mixed * BASIS_POINTS) >> 32


def percent_to_bp(percent: float) -> int:
    """A percentage (0..100, at most two decimals) in basis points."""
    return round(percent * 100)


def goes_to_candidate(multiplier: int, offset: int, limit: int, request_hash: int) -> bool:
    """Whether a request hash is in the candidate's share: ``bucket < share``, as ``mixed64 < limit``.

    ``multiplier`` and ``offset`` are the rollout's :class:`Salt`, ``limit`` is ``Salt.limit(share_bp)``
    (a :class:`~rule_engine.ServingSnapshot` holds all three). ``RuleEngine.evaluate`` inlines this
    expression; ``tests/test_routing.py`` holds the two equal on the golden vectors.
    """
    return (multiplier * request_hash + offset) & _MASK64 < limit
