"""Consistent-hash routing, algorithm version 1 (specified in docs/routing.md).

A request's key is hashed once, with unsigned 32-bit murmur3 (seed 0) of :func:`key_bytes`: that is
the *request hash*, which callers may compute ahead with :func:`compute_request_hash` (the data plane
uses :func:`hash_key`, which never raises and gives None for a key that routes to stable). Each rollout then salts it with
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
    "MAX_KEY_TEXT",
    "Salt",
    "bucket_of",
    "compute_request_hash",
    "goes_to_candidate",
    "hash_key",
    "key_bytes",
    "percent_to_bp",
]

ALGORITHM_VERSION = 1
BASIS_POINTS = 10_000
_MASK64 = (1 << 64) - 1
_SEPARATOR = "\x1f"  # ASCII unit separator between key parts


#: The longest text ``str()`` of a non-text key may give (characters); a longer one routes to stable.
MAX_KEY_TEXT = 4096


def key_bytes(*parts: object) -> bytes:
    """The exact bytes hashed for a routing key (docs/routing.md, "Request hash").

    * one ``str``: its UTF-8 encoding; a lone surrogate (which ``json.loads`` produces from
      ``"\\ud800"``) is encoded with ``surrogatepass``, as the three bytes of its code point in
      UTF-8's bit pattern (``"\\ud800"`` -> ``ED A0 80``). For every valid string this *is* its
      UTF-8, so no valid key routes differently than before;
    * one ``bytes`` or ``bytearray``: as is;
    * anything else, or several parts: each part converted with ``str()`` (a ``str`` part kept
      as is), joined by the ASCII unit separator 0x1F, then encoded as above.

    Raises ``ValueError`` when a part cannot be converted (``str()`` raised, or gave something
    that is not a string of at most :data:`MAX_KEY_TEXT` characters).
    """
    if len(parts) == 1:
        part = parts[0]
        if isinstance(part, str):
            return str.encode(part, "utf-8", "surrogatepass")
        if isinstance(part, bytes | bytearray):
            return bytes(part)
    text = _SEPARATOR.join(_text_of(part) for part in parts)
    return str.encode(text, "utf-8", "surrogatepass")


def _text_of(part: object) -> str:
    if isinstance(part, str):
        return part
    try:
        text = str(part)
    except Exception as exc:  # an int over the int-to-str limit, a raising __str__...
        raise ValueError(f"routing key of type {type(part).__name__} cannot be converted to text") from exc
    if not isinstance(text, str) or len(text) > MAX_KEY_TEXT:
        raise ValueError(f"routing key of type {type(part).__name__} converts to text over {MAX_KEY_TEXT} characters")
    return text


def compute_request_hash(*parts: object) -> int:
    """The request hash of a routing key: unsigned 32-bit murmur3 (seed 0) of :func:`key_bytes`.

    Raises ``ValueError`` for a key that cannot be converted (see :func:`key_bytes`); the data
    plane uses :func:`hash_key`, which never raises.
    """
    if len(parts) == 1:
        part = parts[0]
        if type(part) is str and part.isascii():  # its UTF-8 is its ASCII: no encoding needed
            return int(mmh3.hash(part, 0, False))
    return int(mmh3.hash(key_bytes(*parts), 0, False))


def hash_key(key: object) -> int | None:
    """The request hash of one routing key, or None: never raises, never crashes.

    None for a key of None (no key) and for a key :func:`key_bytes` cannot convert; callers route
    a None hash to the stable version. ``str`` keys that are ASCII are hashed directly (the common
    case, one C call); every other key through :func:`key_bytes`, so a lone surrogate is never
    handed to ``mmh3`` as text (mmh3 5.x crashes on it).
    """
    if type(key) is str:  # never hand mmh3 a str that is not ASCII: mmh3 5.x crashes on surrogates
        return int(mmh3.hash(key if key.isascii() else key.encode("utf-8", "surrogatepass"), 0, False))
    if key is None:
        return None
    try:
        return int(mmh3.hash(key_bytes(key), 0, False))
    except Exception:
        return None


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
