"""Rollout strategies: immutable, validated values saying how a version takes traffic.

- :class:`BlueGreen`: all traffic moves at once, atomically.
- :class:`Canary`: the candidate takes growing shares (``stages``, in percent), each held for
  ``stage_duration_secs`` before it may advance; the last stage is 100 and completes the rollout.
- :class:`ABTest`: traffic is split between A (the version active when the test starts; it keeps
  ``split_ratio`` of traffic) and B (the new version) for ``test_duration_secs``; then a person (or
  code) picks the winner with ``conclude_experiment``.
- :class:`Scheduled`: an atomic swap at ``activation_time``, performed by the controller's ``tick()``.

Each strategy answers its own questions, as APScheduler 4's triggers own ``next()``: the share it
starts at (:meth:`Strategy.first_share_bp`, None for an atomic swap), the share after each stage
(:meth:`~Strategy.next_share_bp`), when its current step ends (:meth:`~Strategy.step_ends_at`),
whether it finishes by itself or waits for a person (:attr:`~Strategy.finishes_by_itself`), when the
controller activates it by itself (:meth:`~Strategy.activates_at`), how the CLI spells it
(:attr:`~Strategy.kind`, :attr:`~Strategy.cli_options`, :meth:`~Strategy.from_options`) and its
stored JSON form (:meth:`~Strategy.to_dict`, :func:`strategy_from_dict`, through a registry keyed by
kind). The planners in ``control/transitions.py`` ask these questions instead of testing classes, so a
fifth strategy is one class here (decorated with :func:`register`) plus the CLI's option parsers.

The strategies that split traffic (canary, A/B test) may be *scoped* to some agents and/or flows
(``agents=``, ``flows=``; empty = everyone; :meth:`Strategy.scope`, :meth:`Strategy.scoped`): events
outside the scope are always served by the stable version (docs/routing.md, "Targeting").
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from rule_engine.clock import LAST_RENDERABLE_TIME, as_timestamp, iso
from rule_engine.control.shadowing import ShadowOptions
from rule_engine.errors import InvalidStrategyError
from rule_engine.serving.routing import BASIS_POINTS, percent_to_bp

__all__ = [
    "MAX_SCOPE_NAME",
    "MAX_SCOPE_NAMES",
    "ABTest",
    "BlueGreen",
    "Canary",
    "InvalidStrategyError",
    "Scheduled",
    "Strategy",
    "register",
    "require_strategy",
    "rollout_kinds",
    "sorted_names",
    "strategy_class",
    "strategy_for_cli",
    "strategy_from_dict",
    "strategy_kinds",
    "validate_scope",
]

#: At most this many agents (and this many flows) in one rollout's scope.
MAX_SCOPE_NAMES = 100
#: The longest agent or flow name in a scope, in characters.
MAX_SCOPE_NAME = 128
_SCOPE_FIELDS = ("agents", "flows")
_OPTIONAL_FIELDS = (*_SCOPE_FIELDS, "shadow")  # left out of the stored form when empty
Scope = tuple[tuple[str, ...], tuple[str, ...]]


def sorted_names(
    names: object, *, what: str, kind: str, limit: int, longest: int, error: type[Exception]
) -> tuple[str, ...]:
    """``names`` as a sorted tuple without duplicates (reading at most ``limit + 1`` of them).

    Raises ``error("{what}: ...")`` for a bare string, more than ``limit`` names, or a name that is
    not non-blank text of at most ``longest`` characters. Used for scopes and pinned keys.
    """
    if isinstance(names, str | bytes) or names is None:
        raise error(f"{what}: expected a list of {kind}s, not {names!r:.80}")
    try:
        values = list(itertools.islice(names, limit + 1))  # type: ignore[call-overload]
    except TypeError:
        raise error(f"{what}: expected a list of {kind}s, got {type(names).__name__}") from None
    if len(values) > limit:
        raise error(f"{what}: at most {limit:,} {kind}s")
    for value in values:
        if not isinstance(value, str) or not value.strip() or len(value) > longest:
            raise error(f"{what}: {value!r:.80} is not a {kind} (non-blank text of at most {longest} characters)")
    return tuple(sorted(set(values)))


def validate_scope(what: str, names: object) -> tuple[str, ...]:
    """``names`` (agents or flows, per ``what``) as a sorted tuple without duplicates; empty = everyone.

    Raises :class:`InvalidStrategyError` for a bare string, a name that is not a non-blank string of
    at most :data:`MAX_SCOPE_NAME` characters, or more than :data:`MAX_SCOPE_NAMES` names.
    """
    limits = {"limit": MAX_SCOPE_NAMES, "longest": MAX_SCOPE_NAME}
    return sorted_names(names, what=what, kind="name", error=InvalidStrategyError, **limits)


def _describe_scope(agents: tuple[str, ...], flows: tuple[str, ...]) -> str:
    parts = [f"{label} {', '.join(names)}" for label, names in (("agents", agents), ("flows", flows)) if names]
    return f" (only {'; '.join(parts)})" if parts else ""


class Strategy(ABC):
    """What every rollout strategy answers about itself; the defaults describe an atomic swap.

    Subclasses are frozen dataclasses whose fields are their parameters (the generic
    :meth:`to_dict` / :meth:`from_dict` rely on that) and are registered with :func:`register`.
    """

    __slots__ = ()

    #: The stored and CLI spelling (``--strategy KIND``); the registry key.
    kind: ClassVar[str]
    #: True when a rollout of it may split traffic between a candidate and a stable version.
    splits_traffic: ClassVar[bool] = False
    #: True when it ends on its own (a canary reaching 100%); False when a person picks the outcome
    #: (an A/B test: ``conclude``). Atomic swaps finish at once.
    finishes_by_itself: ClassVar[bool] = True
    #: The CLI options it takes (``stage_duration`` for ``--stage-duration``), each mapped to the
    #: constructor parameter it sets.
    cli_options: ClassVar[Mapping[str, str]] = MappingProxyType({})
    #: Which kind the CLI implies when only this strategy's options are given (higher wins).
    cli_precedence: ClassVar[int] = 0
    #: What the CLI prints after deploying it: who moves it on from here ("" for nothing).
    cli_note: ClassVar[str] = ""

    def first_share_bp(self) -> int | None:
        """The candidate's first share in basis points; None for an atomic swap."""
        return None

    def next_share_bp(self, stage_index: int) -> int | None:
        """The share after stage ``stage_index`` (0-based) ends; None when no stage follows."""
        return None

    def stage_percentages(self) -> tuple[float, ...]:
        """The shares it steps through, in percent (empty when it does not step)."""
        return ()

    def step_duration_secs(self, stage_index: int) -> float | None:
        """How long step ``stage_index`` lasts; None if it has no steps."""
        return None

    def step_ends_at(self, started_at: float, stage_started_at: float) -> float | None:
        """When the current step of a rollout that started at ``started_at`` ends; None if it has no steps."""
        return None

    def step_is_over(self, now: float, started_at: float, stage_started_at: float) -> bool:
        """True when the current step has lasted its duration at ``now``."""
        return True

    def activates_at(self) -> float | None:
        """When the controller activates it by itself (unix seconds); None when a person activates it."""
        return None

    def scope(self) -> Scope:
        """The (agents, flows) a rollout of it is limited to; empty tuples = everyone."""
        return (), ()

    def scoped(self: _S, agents: Any = (), flows: Any = ()) -> _S:
        """This strategy limited to ``agents`` and/or ``flows`` (empty = everyone; validated).

        Only strategies that split traffic can be scoped: :class:`InvalidStrategyError` otherwise.
        """
        agents, flows = validate_scope("agents", agents), validate_scope("flows", flows)
        if not agents and not flows and self.scope() == ((), ()):
            return self
        if not self.splits_traffic:
            raise InvalidStrategyError(
                f"a {self.kind} deployment cannot be limited to agents or flows (canary or A/B test only)"
            )
        return dataclasses.replace(self, agents=agents, flows=flows)  # type: ignore[type-var]

    @abstractmethod
    def describe(self) -> str:
        """One line for people."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with the deployment: ``kind`` and the parameters (an empty scope is left out)."""
        data: dict[str, Any] = {"kind": self.kind}
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if item.name in _OPTIONAL_FIELDS and not value:
                continue  # unscoped, no shadow: the stored form stays what it was before they existed
            data[item.name] = list(value) if isinstance(value, tuple) else _stored(value)
        return data

    @classmethod
    def from_dict(cls: type[_S], data: Mapping[str, Any]) -> _S:
        """Rebuild from :meth:`to_dict` (raises ``KeyError`` for a missing parameter; a missing scope is everyone)."""
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        return cls(**{f.name: data[f.name] for f in fields if f.name in data or f.name not in _OPTIONAL_FIELDS})

    @classmethod
    def from_options(cls: type[_S], **options: Any) -> _S:
        """Build from parsed CLI options named as in :attr:`cli_options` (``None`` = not given: the default)."""
        given = {name: options[option] for option, name in cls.cli_options.items() if options.get(option) is not None}
        return cls(**given)


def _stored(value: Any) -> Any:
    """A parameter's stored form: its ``to_dict()`` if it has one (shadow options), else itself."""
    return value.to_dict() if isinstance(value, ShadowOptions) else value


_S = TypeVar("_S", bound=Strategy)
_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[_S]) -> type[_S]:
    """Class decorator: make ``cls`` known by its ``kind`` (stored form, CLI, rollout records)."""
    if cls.kind in _REGISTRY:
        raise ValueError(f"strategy kind {cls.kind!r} is already registered by {_REGISTRY[cls.kind].__name__}")
    _REGISTRY[cls.kind] = cls
    return cls


@register
@dataclass(frozen=True, slots=True)
class BlueGreen(Strategy):
    """Swap all traffic to the new version at once (after a shadow phase, with ``shadow=``: control/shadowing.py)."""

    shadow: ShadowOptions | None = None
    kind: ClassVar[str] = "blue-green"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shadow", ShadowOptions.of(self.shadow))

    def describe(self) -> str:
        """One line for people."""
        return "blue-green" + (f" after a {self.shadow.describe()}" if self.shadow else "")


@register
@dataclass(frozen=True, slots=True)
class Canary(Strategy):
    """Move traffic in stages: ``stages`` percentages, strictly increasing, ending at 100 (``shadow=``: first a shadow phase)."""

    stages: tuple[float, ...] = (10, 25, 50, 100)
    stage_duration_secs: float = 300.0
    agents: tuple[str, ...] = ()
    flows: tuple[str, ...] = ()
    shadow: ShadowOptions | None = None
    kind: ClassVar[str] = "canary"
    splits_traffic: ClassVar[bool] = True
    cli_options: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"stages": "stages", "stage_duration": "stage_duration_secs"}
    )
    cli_precedence: ClassVar[int] = 2
    cli_note: ClassVar[str] = "the controller advances it stage by stage while it stays healthy"

    def __init__(
        self,
        stages: Any = (10, 25, 50, 100),
        stage_duration_secs: float = 300.0,
        agents: Any = (),
        flows: Any = (),
        shadow: ShadowOptions | None = None,
    ) -> None:
        try:
            values = tuple(stages)
        except TypeError:
            raise InvalidStrategyError(f"canary stages must be a list of percentages, got {stages!r}") from None
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidStrategyError(f"canary stage {value!r} is not a number")
            if not 0 < value <= 100:
                raise InvalidStrategyError(f"canary stage {value!r} is outside (0, 100]")
            if abs(value * 100 - round(value * 100)) > 1e-6:  # 1.1 * 100 is 110.00000000000001
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
        object.__setattr__(self, "agents", validate_scope("agents", agents))
        object.__setattr__(self, "flows", validate_scope("flows", flows))
        object.__setattr__(self, "shadow", ShadowOptions.of(shadow))

    def scope(self) -> Scope:
        """The agents and flows it is limited to (empty = everyone)."""
        return self.agents, self.flows

    def first_share_bp(self) -> int:
        """The first stage, in basis points."""
        return percent_to_bp(self.stages[0])

    def next_share_bp(self, stage_index: int) -> int | None:
        """The stage after ``stage_index``, in basis points (the last stage is 10,000)."""
        following = stage_index + 1
        return percent_to_bp(self.stages[following]) if 0 <= following < len(self.stages) else None

    def stage_percentages(self) -> tuple[float, ...]:
        """The stages, in percent."""
        return self.stages

    def step_duration_secs(self, stage_index: int) -> float:
        """Every stage lasts ``stage_duration_secs``."""
        return self.stage_duration_secs

    def step_ends_at(self, started_at: float, stage_started_at: float) -> float:
        """The current stage ends ``stage_duration_secs`` after it started."""
        return stage_started_at + self.stage_duration_secs

    def step_is_over(self, now: float, started_at: float, stage_started_at: float) -> bool:
        """The current stage has lasted ``stage_duration_secs``."""
        return now - stage_started_at >= self.stage_duration_secs

    def describe(self) -> str:
        """One line for people."""
        steps = " -> ".join(f"{s:g}%" for s in self.stages)
        shadow = f" after a {self.shadow.describe()}" if self.shadow else ""
        return (
            f"canary {steps}, {self.stage_duration_secs:g}s per stage{_describe_scope(self.agents, self.flows)}{shadow}"
        )


@register
@dataclass(frozen=True, slots=True)
class ABTest(Strategy):
    """Split traffic: A (the stable version) keeps ``split_ratio``, B (this version) the rest."""

    split_ratio: float = 0.5
    test_duration_secs: float = 3600.0
    agents: tuple[str, ...] = ()
    flows: tuple[str, ...] = ()
    kind: ClassVar[str] = "ab-test"
    splits_traffic: ClassVar[bool] = True
    finishes_by_itself: ClassVar[bool] = False
    cli_options: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"split_ratio": "split_ratio", "test_duration": "test_duration_secs"}
    )
    cli_precedence: ClassVar[int] = 1

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
        object.__setattr__(self, "agents", validate_scope("agents", self.agents))
        object.__setattr__(self, "flows", validate_scope("flows", self.flows))

    def scope(self) -> Scope:
        """The agents and flows it is limited to (empty = everyone)."""
        return self.agents, self.flows

    def first_share_bp(self) -> int:
        """B's share, in basis points: what A's ``split_ratio`` leaves."""
        return BASIS_POINTS - round(self.split_ratio * BASIS_POINTS)

    def step_duration_secs(self, stage_index: int) -> float:
        """The test is one step of ``test_duration_secs``."""
        return self.test_duration_secs

    def step_ends_at(self, started_at: float, stage_started_at: float) -> float:
        """The test ends ``test_duration_secs`` after it started."""
        return started_at + self.test_duration_secs

    def step_is_over(self, now: float, started_at: float, stage_started_at: float) -> bool:
        """The test has lasted ``test_duration_secs``."""
        return now - started_at >= self.test_duration_secs

    def describe(self) -> str:
        """One line for people."""
        split = f"{self.split_ratio:.0%}/{1 - self.split_ratio:.0%}"
        return f"A/B test {split} for {self.test_duration_secs:g}s{_describe_scope(self.agents, self.flows)}"


@register
@dataclass(frozen=True, slots=True)
class Scheduled(Strategy):
    """Swap all traffic at ``activation_time`` (unix seconds or an aware datetime)."""

    activation_time: float = field(default=0.0)
    kind: ClassVar[str] = "scheduled"
    cli_options: ClassVar[Mapping[str, str]] = MappingProxyType({"at": "activation_time"})
    cli_precedence: ClassVar[int] = 3
    cli_note: ClassVar[str] = "the controller ('rule-engine controller') activates it when due"

    def __init__(self, activation_time: float | int | datetime) -> None:
        try:
            ts = as_timestamp(activation_time)
        except ValueError as exc:
            raise InvalidStrategyError(f"activation_time: {exc}") from None
        if not math.isfinite(ts) or not 0 <= ts < LAST_RENDERABLE_TIME:
            raise InvalidStrategyError(f"activation_time must be a time between 1970 and 9999, got {activation_time!r}")
        object.__setattr__(self, "activation_time", ts)

    def activates_at(self) -> float:
        """``activation_time``: the controller's tick activates it then."""
        return self.activation_time

    def describe(self) -> str:
        """One line for people."""
        return f"scheduled at {iso(self.activation_time)}"

    @classmethod
    def from_options(cls, **options: Any) -> Scheduled:
        """From ``at`` (unix seconds), which is required."""
        if options.get("at") is None:
            raise InvalidStrategyError("--strategy scheduled needs --at TIME")
        return cls(options["at"])


def strategy_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order (the CLI's ``--strategy`` choices)."""
    return tuple(_REGISTRY)


def rollout_kinds() -> tuple[str, ...]:
    """The kinds a stored rollout may have: the strategies that split traffic."""
    return tuple(kind for kind, cls in _REGISTRY.items() if cls.splits_traffic)


def strategy_class(kind: object) -> type[Strategy]:
    """The strategy class registered for ``kind``; :class:`InvalidStrategyError` if there is none."""
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidStrategyError(f"unknown strategy kind {kind!r}")
    return cls


def strategy_from_dict(data: Mapping[str, Any]) -> Strategy:
    """Rebuild a strategy from its stored JSON form."""
    return strategy_class(data.get("kind")).from_dict(data)


def require_strategy(value: object) -> Strategy:
    """``value`` if it is a strategy; ``TypeError`` naming the strategies otherwise."""
    if not isinstance(value, Strategy):
        names = [cls.__name__ for cls in _REGISTRY.values()]
        raise TypeError(f"strategy must be {', '.join(names[:-1])} or {names[-1]}, got {value!r}")
    return value


def _flags(cls: type[Strategy]) -> str:
    return "/".join(f"--{name.replace('_', '-')}" for name in cls.cli_options)


def strategy_for_cli(kind: str | None, given: Collection[str]) -> type[Strategy]:
    """The strategy class a CLI command means: ``kind``, or the one implied by the ``given`` options.

    Options of another strategy than the chosen one raise :class:`InvalidStrategyError` naming them
    (e.g. ``--stages/--stage-duration do(es) not apply to --strategy ab-test``). With no kind and no
    options, the answer is :class:`BlueGreen`.
    """
    if kind is None:
        implied = [cls for cls in _REGISTRY.values() if set(cls.cli_options) & set(given)]
        chosen = max(implied, key=lambda cls: cls.cli_precedence) if implied else BlueGreen
    else:
        chosen = strategy_class(kind)
    wrong = [_flags(cls) for cls in _REGISTRY.values() if cls is not chosen and set(cls.cli_options) & set(given)]
    if wrong:
        raise InvalidStrategyError(f"{', '.join(wrong)} do(es) not apply to --strategy {chosen.kind}")
    return chosen
