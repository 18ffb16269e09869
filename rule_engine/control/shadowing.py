"""The shadow phase of a rollout: its options (a strategy's ``shadow=``), and how it is shown.

A :class:`~rule_engine.control.strategies.Canary` or :class:`~rule_engine.control.strategies.BlueGreen`
given ``shadow=ShadowOptions(...)`` starts its rollout in a **shadow phase**: the stored
:class:`~rule_engine.control.records.Rollout` has ``phase == "shadow"`` and a share of 0, so no
request is answered by the candidate; every process that follows the store decides a sample of the
events the stable version served on the candidate too (off the request thread) and flushes what it
counted into the store's health buckets. The controller judges the fleet-wide figures with
:class:`~rule_engine.health.shadow.ShadowPolicy` (``proceed`` starts the first canary stage, or
the blue-green switch; ``abort`` aborts the rollout; ``hold`` waits and says why).

Pure: no I/O, no clock. The planners that end the phase are in :mod:`rule_engine.control.shadow_phase`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from rule_engine.errors import InvalidStrategyError
from rule_engine.health.shadow import ShadowPolicy, ShadowVerdict
from rule_engine.serving.shadow import ShadowReport

if TYPE_CHECKING:
    from rule_engine.control.records import Rollout
    from rule_engine.control.strategies import Strategy

__all__ = ["SHADOW", "ShadowOptions", "ShadowPhase", "entering", "in_shadow", "shadow_options"]

#: ``Rollout.phase`` of a rollout whose candidate runs in the shadow (0% of traffic).
SHADOW = "shadow"


@dataclass(frozen=True, slots=True)
class ShadowOptions:
    """How a rollout's shadow phase samples and what ends it (the thresholds of :class:`ShadowPolicy`).

    ``sample_rate`` (0 < rate <= 1) is the share of the events the stable version decided that the
    candidate decides too, in each serving process. The rest are :class:`ShadowPolicy`'s thresholds,
    judged over the health window (``window_secs`` of the version's analysis settings).
    """

    sample_rate: float = 0.1
    min_compared: int = 500
    max_disagreement_rate: float = 0.05
    abort_disagreement_rate: float = 0.25
    max_error_rate: float = 0.0
    abort_error_rate: float = 0.05

    def __post_init__(self) -> None:
        rate = self.sample_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or not 0 < rate <= 1:
            raise InvalidStrategyError(f"shadow sample_rate must be a number in (0, 1], got {rate!r}")
        object.__setattr__(self, "sample_rate", float(rate))
        try:
            self.policy()
        except ValueError as exc:
            raise InvalidStrategyError(f"shadow: {exc}") from None

    def policy(self) -> ShadowPolicy:
        """The thresholds as a :class:`ShadowPolicy`."""
        return ShadowPolicy(**{name: getattr(self, name) for name in ShadowPolicy.__dataclass_fields__})

    def describe(self) -> str:
        """One line for people."""
        return (
            f"shadow {self.sample_rate:.0%} first (proceed with >= {self.min_compared:,} compared and "
            f"<= {self.max_disagreement_rate:.0%} disagreement, abort over {self.abort_disagreement_rate:.0%})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON form."""
        return asdict(self)

    @classmethod
    def of(cls, value: object) -> ShadowOptions | None:
        """``value`` as options: None, options, or their stored JSON form (validated)."""
        if value is None or isinstance(value, ShadowOptions):
            return value
        if not isinstance(value, Mapping):
            raise InvalidStrategyError(f"shadow must be ShadowOptions, got {type(value).__name__}")
        names = set(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in value if k not in names)
        if unknown:
            raise InvalidStrategyError(f"shadow: unknown option(s) {', '.join(unknown)}")
        return cls(**{str(k): v for k, v in value.items()})


def shadow_options(strategy: Strategy) -> ShadowOptions | None:
    """The shadow phase ``strategy`` starts with (None: none)."""
    options = getattr(strategy, "shadow", None)
    return options if isinstance(options, ShadowOptions) else None


def in_shadow(rollout: Rollout | None) -> bool:
    """True while ``rollout`` is in its shadow phase."""
    return rollout is not None and rollout.phase == SHADOW


def entering(rollout: Rollout, strategy: Strategy) -> Rollout:
    """``rollout`` restarted at its first step: in the shadow phase if ``strategy`` has one (``retry``)."""
    if shadow_options(strategy) is not None:
        return replace(rollout, phase=SHADOW, share_bp=0, converged_at=None, converged_stage=None)
    return replace(rollout, phase=None) if rollout.phase is not None else rollout


@dataclass(frozen=True, slots=True)
class ShadowPhase:
    """A shadow phase's fleet-wide figures over the health window, and the verdict on them."""

    options: ShadowOptions
    report: ShadowReport
    verdict: ShadowVerdict
    window_secs: float

    @property
    def holding(self) -> str | None:
        """Why the phase holds (None: it proceeds or aborts at the next tick)."""
        return f"shadow: {self.verdict.reason}" if self.verdict.action == "hold" else None

    def to_dict(self, groups: int = 20) -> dict[str, Any]:
        """The JSON form (``status --json``'s ``rollout.shadow``); the ``groups`` largest groups."""
        data = self.report.to_dict()
        shown = data["groups"][:groups]
        return {
            "phase": SHADOW,
            **{k: v for k, v in data.items() if k != "groups"},
            "groups": shown,
            "groups_left_off": len(data["groups"]) - len(shown),
            "window_secs": self.window_secs,
            "verdict": self.verdict.to_dict(),
            "options": self.options.to_dict(),
        }
