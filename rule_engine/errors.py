"""The exception tree of rule_engine.

Every error the library raises on purpose derives from :class:`RuleEngineError`::

    RuleEngineError
    ├── BundleValidationError (also ValueError)   a bundle is malformed; lists every problem with its path
    │   ├── BundleTestFailure                     a bundle's own tests failed
    │   └── BundleTrustError                      unsigned, tampered or untrusted bundle
    ├── RuleEvaluationError                       a rule failed on an event at run time
    ├── DeploymentError                           a control-plane operation was refused
    │   ├── VersionNotFoundError (also LookupError)  "Version not found"
    │   ├── NoPreviousVersionError                "No previous version to rollback to"
    │   ├── ActivationTimeNotReachedError         "Activation time not reached"
    │   ├── InvalidTransitionError                not allowed from the current state
    │   ├── RolloutInProgressError                a second rollout while one is in progress
    │   └── PolicyMismatchError                   a bundle of another policy (bundle_id) than the one serving
    ├── InvalidStrategyError (also ValueError)    a strategy's parameters are invalid
    └── StoreError                                the state store failed or is unreachable
        ├── ConflictError                         a concurrent writer changed the state first
        └── StoreURLError (also ValueError)       an unknown or malformed store URL

Data-plane calls (routing, evaluation through :class:`rule_engine.RuleEngine`) do not raise these:
they answer with a decision that says what went wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rule_engine.clock import iso


class RuleEngineError(Exception):
    """Root of every error raised on purpose by rule_engine."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found in a bundle: where (a JSON path such as ``rules[3].when.op``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class BundleValidationError(RuleEngineError, ValueError):
    """A bundle was rejected. ``problems`` lists every problem found, each with its JSON path."""

    def __init__(self, problems: Iterable[Problem], *, source: str | None = None) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return f"{where}invalid bundle: {self.problems[0]}"
        lines = "; ".join(str(p) for p in self.problems)
        return f"{where}invalid bundle ({len(self.problems)} problems): {lines}"

    def with_source(self, source: str) -> BundleValidationError:
        """The same error, naming the file or URL it came from."""
        return type(self)(self.problems, source=source)


class BundleTestFailure(BundleValidationError):
    """The bundle's own ``tests`` did not pass; each problem names the failing test."""


class BundleTrustError(BundleValidationError):
    """The bundle is unsigned, its signature does not verify, or its signer is not trusted."""


class RuleEvaluationError(RuleEngineError):
    """A rule could not be evaluated on an event (for example a string compared with a number)."""

    def __init__(self, rule_id: str, field: str, message: str) -> None:
        self.rule_id = rule_id
        self.field = field
        super().__init__(f"rule {rule_id!r}, field {field!r}: {message}")


class DeploymentError(RuleEngineError):
    """A control-plane operation was refused; nothing served changed."""


class VersionNotFoundError(DeploymentError, LookupError):
    """No version with that id is known (never prepared, or evicted from history)."""

    def __init__(self, version_id: str, known: Sequence[str] = ()) -> None:
        self.version_id = version_id
        hint = f"; known versions: {', '.join(known)}" if known else ""
        super().__init__(f"Version not found: {version_id!r}{hint}")


class NoPreviousVersionError(DeploymentError):
    """Rollback was asked for, but there is no earlier version to return to."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("No previous version to rollback to" + (f": {detail}" if detail else ""))


class ActivationTimeNotReachedError(DeploymentError):
    """A scheduled deployment was activated before its activation time."""

    def __init__(self, version_id: str, activation_time: float, now: float) -> None:
        self.version_id = version_id
        self.activation_time = activation_time
        super().__init__(
            f"Activation time not reached for {version_id!r}: due at {iso(activation_time)}, "
            f"{activation_time - now:.0f}s from now (the controller's tick() activates it then)"
        )


class InvalidTransitionError(DeploymentError):
    """The operation is not allowed in the current state; the message says what is."""


class RolloutInProgressError(DeploymentError):
    """A rollout or A/B test is already in progress; finish, roll back, or supersede it first."""

    def __init__(self, in_progress: str, requested: str) -> None:
        self.in_progress = in_progress
        self.requested = requested
        super().__init__(
            f"cannot activate {requested!r}: rollout of {in_progress!r} is in progress; "
            "promote() or rollback() it first, or activate with supersede=True to abort it"
        )


class InvalidStrategyError(RuleEngineError, ValueError):
    """A strategy's parameters are invalid; the message says which and why."""


class PolicyMismatchError(DeploymentError):
    """A bundle's ``bundle_id`` differs from the policy the deployment serves (deploy with ``replace_policy``)."""

    def __init__(self, bundle_id: str, serving_bundle_id: str, serving_version_id: str) -> None:
        self.bundle_id = bundle_id
        self.serving_bundle_id = serving_bundle_id
        self.serving_version_id = serving_version_id
        super().__init__(
            f"bundle {bundle_id!r} is another policy than the one this deployment serves "
            f"({serving_bundle_id!r}, version {serving_version_id!r}); deploying it would replace that whole "
            f"policy: deploy it as a deployment of its own (deployment={bundle_id!r}), "
            f"or with replace_policy=True if replacing that policy is meant"
        )


class DeploymentNotFoundError(DeploymentError, LookupError):
    """The store holds no deployment of that name (``names``: the ones it holds)."""

    def __init__(self, name: str, names: list[str], where: str = "the store") -> None:
        self.name = name
        self.names = names
        held = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
        super().__init__(f"{where} holds no deployment {name!r} (deployments: {held})")


class AmbiguousDeploymentError(DeploymentError):
    """The store holds several deployments and none was named (``names``: the ones it holds)."""

    def __init__(self, names: list[str], where: str = "the store") -> None:
        self.names = names
        held = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
        super().__init__(f"{where} holds {len(names)} deployments ({held}); name one with deployment=NAME")


class StoreError(RuleEngineError):
    """The state store failed, is unreachable or holds data this version cannot read."""


class ConflictError(StoreError):
    """Another writer changed the deployment state first; re-read and try again."""


class StoreURLError(StoreError, ValueError):
    """The store URL is malformed or names an unsupported backend."""
