"""An on-host cache of the compiler's generated code, shared by the processes of one host.

The compiler (:mod:`rule_engine.evaluation.compiler`) generates Python source per condition shape
and compiles it; ``compile()`` costs ~0.1-0.2 ms per shape, which matters for a bundle of thousands
of distinct shapes, in every process that loads it. With a cache, a process that compiled a shape
stores the marshalled code object under the sha256 of its source, and the other processes of the
host read it instead of compiling.

Marshalled code is code: an entry is only used when the cache could not have been written by
anyone but this user. So, on POSIX only (elsewhere the cache is off):

* the directory must be a real directory (not a symlink) owned by this user and not writable by
  group or others (it is created with mode 0700 when missing); otherwise the cache is off for
  the process, with the reason in :attr:`CodeCache.disabled_reason`;
* an entry must be a regular file (opened without following symlinks) owned by this user, not
  writable by group or others, at most :data:`MAX_ENTRY_BYTES`;
* an entry is verified on every read: its header names the format, this Python's bytecode magic
  and the sha256 of the source it was compiled from (which must be the source being compiled),
  and a sha256 of the marshalled bytes, checked before they are unmarshalled. Any failure is
  a miss (counted in ``refused``), and the source is compiled as without a cache.

Writes are atomic (a private temporary file in the directory, then ``os.replace``); the directory
holds at most ``max_entries`` entries (a full cache stops growing; delete the directory to reset
it). Enable it for a process with the environment variable :data:`ENVIRONMENT` naming a directory
(read when a :class:`~rule_engine.DeploymentManager` is created), or
:func:`rule_engine.evaluation.compiler.use_code_cache`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import stat
import tempfile
from functools import lru_cache
from pathlib import Path
from types import CodeType

__all__ = ["ENVIRONMENT", "MAX_ENTRIES", "MAX_ENTRY_BYTES", "CodeCache", "environment_cache"]

ENVIRONMENT = "RULE_ENGINE_CODE_CACHE"
MAX_ENTRIES = 4096
MAX_ENTRY_BYTES = 256 * 1024
_FORMAT = b"rule-engine code cache 1\n" + importlib.util.MAGIC_NUMBER
_HEADER = len(_FORMAT) + 64  # format, sha256 of the source, sha256 of the payload
_SUFFIX = ".code"
_UNSAFE_MODE = stat.S_IWGRP | stat.S_IWOTH


class CodeCache:
    """Marshalled code objects keyed by the sha256 of their source, in a directory only this user can write."""

    def __init__(self, directory: str | os.PathLike[str], *, max_entries: int = MAX_ENTRIES) -> None:
        """A cache in ``directory`` (checked, and created 0700 if missing, on first use)."""
        self.directory = Path(directory)
        self.max_entries = max_entries
        self.disabled_reason: str | None = None
        self.hits = self.misses = self.refused = self.stored = 0
        self._entries: int | None = None  # entries in the directory, counted on first use

    def load(self, source: str) -> CodeType | None:
        """The verified code object compiled from ``source``, or None (compile it then :meth:`store`)."""
        if not self._usable():
            return None
        key = _key(source)
        try:
            data = _read_private(self.directory / (key.hex() + _SUFFIX))
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError):
            self.refused += 1
            return None
        code = _verified(data, key)
        if code is None:
            self.refused += 1
            return None
        self.hits += 1
        return code

    def store(self, source: str, code: CodeType) -> None:
        """Keep ``code`` (compiled from ``source``) for the other processes; never raises."""
        if not self._usable() or self._entries is None or self._entries >= self.max_entries:
            return
        key = _key(source)
        payload = marshal.dumps(code)
        data = _FORMAT + key + hashlib.sha256(payload).digest() + payload
        if len(data) > MAX_ENTRY_BYTES:
            return
        try:
            handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=_SUFFIX, dir=self.directory)
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                os.replace(temporary, self.directory / (key.hex() + _SUFFIX))
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError:
            return
        self._entries += 1
        self.stored += 1

    def _usable(self) -> bool:
        if self._entries is not None:
            return True
        if self.disabled_reason is not None:
            return False
        reason = _directory_problem(self.directory)
        if reason is not None:
            self.disabled_reason = reason
            return False
        try:
            self._entries = sum(1 for entry in os.scandir(self.directory) if entry.name.endswith(_SUFFIX))
        except OSError as exc:
            self.disabled_reason = f"cannot list {self.directory}: {exc.strerror or exc}"
            return False
        return True


def environment_cache() -> CodeCache | None:
    """The cache in the directory named by :data:`ENVIRONMENT`, or None when it is unset or empty."""
    directory = os.environ.get(ENVIRONMENT, "")
    return _cache_in(directory) if directory else None


@lru_cache(maxsize=8)
def _cache_in(directory: str) -> CodeCache:
    return CodeCache(directory)


def _key(source: str) -> bytes:
    return hashlib.sha256(_FORMAT + source.encode("utf-8", "surrogatepass")).digest()


def _directory_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot hold trusted code (None when it can), creating it 0700 if missing."""
    if os.name != "posix":
        return "the code cache is only used on POSIX systems"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(directory)
    except OSError as exc:
        return f"cannot create or inspect {directory}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory (a symlink?)"
    if info.st_uid != os.getuid():
        return f"{directory} is owned by uid {info.st_uid}, not this user ({os.getuid()})"
    if info.st_mode & _UNSAFE_MODE:
        return f"{directory} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); chmod go-w it"
    return None


def _read_private(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file of this user's that only this user can write."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & _UNSAFE_MODE:
            raise ValueError("not a private regular file")
        if info.st_size > MAX_ENTRY_BYTES:
            raise ValueError("too large")
        return handle.read(MAX_ENTRY_BYTES + 1)


def _verified(data: bytes, key: bytes) -> CodeType | None:
    """The code object in an entry's bytes, when its header and checksum are right; else None."""
    if len(data) <= _HEADER or not data.startswith(_FORMAT):
        return None
    start = len(_FORMAT)
    if data[start : start + 32] != key:
        return None
    payload = data[_HEADER:]
    if hashlib.sha256(payload).digest() != data[start + 32 : _HEADER]:
        return None
    try:
        code = marshal.loads(payload)
    except (ValueError, EOFError, TypeError):
        return None
    return code if isinstance(code, CodeType) else None
