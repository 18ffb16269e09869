"""Consistent-hash routing, algorithm versions 1 and 2 (specified in docs/routing.md).

Version 2 (:data:`LATEST_ALGORITHM`) hashes the key with the salt as murmur3's seed and needs no
mixing step::

    seed   = sha256(salt) bytes 0..3 (big-endian)
    hash   = unsigned 32-bit murmur3 of key_bytes(key) with that seed
    bucket = (hash * 10_000) >> 32                             # 0 .. 9_999
    the request goes to the candidate  <=>  bucket < share  <=>  hash < ceil(share * 2**32 / 10_000)

(golden vectors in ``tests/cases/routing_v2.json``). Version 1, below, is kept for rollouts that
started under it: the version is stored with each rollout (``Rollout.algorithm``).

Version 1:

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
    "ALGORITHMS",
    "ALGORITHM_VERSION",
    "BASIS_POINTS",
    "LATEST_ALGORITHM",
    "MAX_KEY_TEXT",
    "Salt",
    "bucket_of",
    "compute_request_hash",
    "goes_to_candidate",
    "hash_key",
    "key_bytes",
    "key_goes_to_candidate",
    "percent_to_bp",
]

LATEST_ALGORITHM = 2  # the newest algorithm
ALGORITHM_VERSION = LATEST_ALGORITHM  # what new rollouts are stamped with (control/transitions.py)
ALGORITHMS = (1, 2)
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


def compute_request_hash(*parts: object, seed: int = 0) -> int:
    """The request hash of a routing key: unsigned 32-bit murmur3 of :func:`key_bytes` with ``seed``.

    ``seed`` 0 is routing algorithm 1's; under algorithm 2 pass the rollout's seed
    (``manager.snapshot.seed``) so that ``route_and_get_table`` routes the hash as ``route`` routes
    the key. Raises ``ValueError`` for a key that cannot be converted (see :func:`key_bytes`) or a
    seed outside 0..2**32-1; the data plane uses :func:`hash_key`, which never raises.
    """
    if type(seed) is not int or not 0 <= seed < 1 << 32:
        raise ValueError(f"a murmur3 seed is an int in 0..2**32-1, got {seed!r}")
    if len(parts) == 1:
        part = parts[0]
        if type(part) is str and part.isascii():  # its UTF-8 is its ASCII: no encoding needed
            return int(mmh3.hash(part, seed, False))
    return int(mmh3.hash(key_bytes(*parts), seed, False))


def hash_key(key: object, seed: int = 0) -> int | None:
    """The request hash of one routing key, or None: never raises, never crashes.

    None for a key of None (no key) and for a key :func:`key_bytes` cannot convert; callers route
    a None hash to the stable version. ``str`` keys that are ASCII are hashed directly (the common
    case, one C call); every other key through :func:`key_bytes`, so a lone surrogate is never
    handed to ``mmh3`` as text (mmh3 5.x crashes on it). ``seed`` is murmur3's seed: 0 for
    algorithm 1, the rollout's :attr:`Salt.seed` for algorithm 2.
    """
    if type(key) is str:  # never hand mmh3 a str that is not ASCII: mmh3 5.x crashes on surrogates
        return int(mmh3.hash(key if key.isascii() else key.encode("utf-8", "surrogatepass"), seed, False))
    if key is None:
        return None
    try:
        return int(mmh3.hash(key_bytes(key), seed, False))
    except Exception:
        return None


@dataclass(frozen=True, slots=True)
class Salt:
    """The per-rollout salt: a text (the rollout's id), its algorithm and the integers derived from it.

    Algorithm 1: ``seed`` 0, ``multiplier`` and ``offset`` mix the request hash. Algorithm 2:
    ``seed`` is murmur3's seed, ``multiplier`` 0 and ``offset`` 0 (no mixing: the hash is compared
    with the limit as it is). Hot paths read the four numbers a snapshot copies from here.
    """

    text: str
    multiplier: int
    offset: int
    algorithm: int = 1
    seed: int = 0

    @classmethod
    def from_text(cls, text: str, algorithm: int = 1) -> Salt:
        """Derive the salt integers of ``text`` for ``algorithm`` (1 or 2; see the module docstring)."""
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        if algorithm == 2:
            return cls(text, 0, 0, 2, int.from_bytes(digest[0:4], "big"))
        if algorithm != 1:
            raise ValueError(f"unknown routing algorithm {algorithm!r}: known are {ALGORITHMS}")
        multiplier = int.from_bytes(digest[0:8], "big") | 1
        offset = int.from_bytes(digest[8:16], "big")
        return cls(text, multiplier, offset)

    def request_hash(self, key: object) -> int | None:
        """The hash of a routing key under this salt's seed (None: the key routes to stable)."""
        return hash_key(key, self.seed)

    def bucket(self, request_hash: int) -> int:
        """The request's bucket, 0..9999, under this salt (``request_hash`` under :attr:`seed`)."""
        return bucket_of(request_hash, self)

    def limit(self, share_bp: int) -> int:
        """The bound equivalent to ``bucket < share_bp``: ``mixed64 < limit`` (v1), ``hash < limit`` (v2).

        ``bucket < s``  <=>  ``x < ceil(s * 2**32 / 10_000)`` for the 32-bit ``x`` the bucket is
        made of (v1: ``mixed``, v2: the hash); v1 compares ``mixed64``, so its bound is shifted by 32.
        """
        shift = 32 if self.algorithm == 1 else 0
        if share_bp <= 0:
            return 0
        if share_bp >= BASIS_POINTS:
            return 1 << (32 + shift)
        return (-(-share_bp * (1 << 32) // BASIS_POINTS)) << shift


def bucket_of(request_hash: int, salt: Salt) -> int:
    """The bucket (0..9999) of a request hash (under the salt's seed) under a rollout's salt."""
    if salt.algorithm == 2:
        return (request_hash * BASIS_POINTS) >> 32
    mixed = ((salt.multiplier * request_hash + salt.offset) & _MASK64) >> 32
    return (mixed * BASIS_POINTS) >> 32


def percent_to_bp(percent: float) -> int:
    """A percentage (0..100, at most two decimals) in basis points."""
    return round(percent * 100)


def goes_to_candidate(multiplier: int, offset: int, limit: int, request_hash: int) -> bool:
    """Whether a request hash is in the candidate's share: ``bucket < share``, as ``mixed64 < limit``.

    ``multiplier`` and ``offset`` are the rollout's :class:`Salt`, ``limit`` is ``Salt.limit(share_bp)``
    (a :class:`~rule_engine.ServingSnapshot` holds all three). ``RuleEngine.evaluate`` inlines this
    expression; ``tests/test_routing.py`` holds the two equal on the golden vectors. A
    ``multiplier`` of 0 is algorithm 2: ``request_hash`` (under the salt's seed) is compared as is.
    """
    return ((multiplier * request_hash + offset) & _MASK64 if multiplier else request_hash) < limit


def key_goes_to_candidate(seed: int, multiplier: int, offset: int, limit: int, key: object) -> bool:
    """Whether a routing key is in the candidate's share, for either algorithm; never raises.

    The four numbers are a :class:`~rule_engine.ServingSnapshot`'s (``seed``, ``multiplier``,
    ``offset``, ``limit``). A key that cannot be hashed is not (it is served by stable).
    """
    request_hash = hash_key(key, seed)
    return request_hash is not None and goes_to_candidate(multiplier, offset, limit, request_hash)
