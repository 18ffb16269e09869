"""Rollout strategies: immutable, validated values saying how a version takes traffic.

- :class:`BlueGreen`: all traffic moves at once, atomically.
- :class:`Canary`: the candidate takes growing shares (``stages``, in percent), each held for
  ``stage_duration_secs`` before it may advance; the last stage is 100 and completes the rollout.
- :class:`ABTest`: traffic is split between A (the version active when the test starts; it keeps
  ``split_ratio`` of traffic) and B (the new version) for ``test_duration_secs``; then a person (or
  code) picks the winner with ``conclude_experiment``.
- :class:`Scheduled`: an atomic swap at ``activation_time``, performed by the controller's ``tick()``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from rule_engine.clock import as_timestamp, iso
from rule_engine.errors import InvalidStrategyError

__all__ = [
    "ABTest",
    "BlueGreen",
    "Canary",
    "InvalidStrategyError",
    "Scheduled",
    "Strategy",
    "strategy_from_dict",
]


@dataclass(frozen=True, slots=True)
class BlueGreen:
    """Swap all traffic to the new version at once."""

    kind: ClassVar[str] = "blue-green"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with the deployment."""
        return {"kind": self.kind}

    def describe(self) -> str:
        """One line for people."""
        return "blue-green"


@dataclass(frozen=True, slots=True)
class Canary:
    """Move traffic in stages: ``stages`` percentages, strictly increasing, ending at 100."""

    stages: tuple[float, ...] = (10, 25, 50, 100)
    stage_duration_secs: float = 300.0
    kind: ClassVar[str] = "canary"

    def __init__(self, stages: Any = (10, 25, 50, 100), stage_duration_secs: float = 300.0) -> None:
        try:
            values = tuple(stages)
        except TypeError:
            raise InvalidStrategyError(f"canary stages must be a list of percentages, got {stages!r}") from None
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidStrategyError(f"canary stage {value!r} is not a number")
            if not 0 < value <= 100:
                raise InvalidStrategyError(f"canary stage {value!r} is outside (0, 100]")
            if round(value * 100) != value * 100:
                raise InvalidStrategyError(f"canary stage {value!r} has more than two decimals")
        if not values:
            raise InvalidStrategyError("canary needs at least one stage")
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise InvalidStrategyError(f"canary stages must strictly increase, got {list(values)}")
        if values[-1] != 100:
            raise InvalidStrategyError(f"canary stages must end at 100, got {list(values)}")
        if (
            isinstance(stage_duration_secs, bool)
            or not isinstance(stage_duration_secs, int | float)
            or not math.isfinite(stage_duration_secs)
            or stage_duration_secs < 0
        ):
            raise InvalidStrategyError(f"stage_duration_secs must be >= 0, got {stage_duration_secs!r}")
        object.__setattr__(self, "stages", tuple(float(v) if not float(v).is_integer() else int(v) for v in values))
        object.__setattr__(self, "stage_duration_secs", float(stage_duration_secs))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with the deployment."""
        return {
            "kind": self.kind,
            "stages": list(self.stages),
            "stage_duration_secs": self.stage_duration_secs,
        }

    def describe(self) -> str:
        """One line for people."""
        steps = " -> ".join(f"{s:g}%" for s in self.stages)
        return f"canary {steps}, {self.stage_duration_secs:g}s per stage"


@dataclass(frozen=True, slots=True)
class ABTest:
    """Split traffic: A (the stable version) keeps ``split_ratio``, B (this version) the rest."""

    split_ratio: float = 0.5
    test_duration_secs: float = 3600.0
    kind: ClassVar[str] = "ab-test"

    def __post_init__(self) -> None:
        ratio = self.split_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
            raise InvalidStrategyError(f"split_ratio must be strictly between 0 and 1, got {ratio!r}")
        if round(ratio * 10_000) in (0, 10_000):
            raise InvalidStrategyError(f"split_ratio {ratio!r} leaves a variant with no traffic")
        duration = self.test_duration_secs
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not duration > 0:
            raise InvalidStrategyError(f"test_duration_secs must be > 0, got {duration!r}")
        object.__setattr__(self, "split_ratio", float(ratio))
        object.__setattr__(self, "test_duration_secs", float(duration))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with the deployment."""
        return {
            "kind": self.kind,
            "split_ratio": self.split_ratio,
            "test_duration_secs": self.test_duration_secs,
        }

    def describe(self) -> str:
        """One line for people."""
        return f"A/B test {self.split_ratio:.0%}/{1 - self.split_ratio:.0%} for {self.test_duration_secs:g}s"


@dataclass(frozen=True, slots=True)
class Scheduled:
    """Swap all traffic at ``activation_time`` (unix seconds or an aware datetime)."""

    activation_time: float = field(default=0.0)
    kind: ClassVar[str] = "scheduled"

    def __init__(self, activation_time: float | int | datetime) -> None:
        try:
            ts = as_timestamp(activation_time)
        except ValueError as exc:
            raise InvalidStrategyError(f"activation_time: {exc}") from None
        if not math.isfinite(ts) or ts < 0:
            raise InvalidStrategyError(f"activation_time must be a time after 1970, got {activation_time!r}")
        object.__setattr__(self, "activation_time", ts)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with the deployment."""
        return {"kind": self.kind, "activation_time": self.activation_time}

    def describe(self) -> str:
        """One line for people."""
        return f"scheduled at {iso(self.activation_time)}"


Strategy = BlueGreen | Canary | ABTest | Scheduled


def strategy_from_dict(data: dict[str, Any]) -> Strategy:
    """Rebuild a strategy from its stored JSON form."""
    kind = data.get("kind")
    if kind == BlueGreen.kind:
        return BlueGreen()
    if kind == Canary.kind:
        return Canary(data["stages"], data["stage_duration_secs"])
    if kind == ABTest.kind:
        return ABTest(data["split_ratio"], data["test_duration_secs"])
    if kind == Scheduled.kind:
        return Scheduled(data["activation_time"])
    raise InvalidStrategyError(f"unknown strategy kind {kind!r}")
