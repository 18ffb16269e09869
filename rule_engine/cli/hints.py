"""Library errors as the CLI says them: hints name ``rule-engine`` commands, not Python calls.

The library's messages are written for Python callers (``promote()``, ``supersede=True``); the CLI
rebuilds them from the error's type and attributes where it can, and otherwise replaces the known
Python spellings with the commands that do the same thing.
"""

from __future__ import annotations

from rule_engine.cli.output import when
from rule_engine.errors import ActivationTimeNotReachedError, PolicyMismatchError, RolloutInProgressError

__all__ = ["PYTHON_TO_CLI", "cli_message", "cli_text"]

# Python spellings in library messages -> what a CLI user types instead.
PYTHON_TO_CLI: tuple[tuple[str, str], ...] = (
    ("use conclude_experiment(winner)", "end it with 'rule-engine conclude WINNER'"),
    ("use advance_rollout() or promote()", "use 'rule-engine advance' or 'rule-engine promote'"),
    ("promote() or rollback() it first", "finish it first ('rule-engine promote' or 'rule-engine rollback')"),
    ("activate with supersede=True to abort it", "deploy with --supersede to abort it"),
    ("the controller's tick() activates it then", "'rule-engine controller' activates it then"),
    ("conclude_experiment(winner)", "'rule-engine conclude WINNER'"),
    ("name one with to=", "name one with 'rule-engine undo --to VERSION'"),
    ("undo(to=...) brings a retained version back", "'rule-engine undo --to VERSION' brings a retained version back"),
    ("advance_rollout()", "'rule-engine advance'"),
    ("promote()", "'rule-engine promote'"),
    ("rollback()", "'rule-engine rollback'"),
    ("supersede=True", "--supersede"),
    (
        "name one with deployment=NAME",
        "name one with 'rule-engine --deployment NAME ...' ('rule-engine deployments' lists them)",
    ),
    ("tick()", "'rule-engine controller'"),
)


def cli_message(exc: Exception) -> str:
    """The one-line message for ``exc`` as a CLI user should read it."""
    if isinstance(exc, RolloutInProgressError):
        return (
            f"cannot activate {exc.requested!r}: the rollout of {exc.in_progress!r} is in progress; "
            "finish it first ('rule-engine promote' or 'rule-engine rollback'), "
            "or deploy with --supersede to abort it"
        )
    if isinstance(exc, ActivationTimeNotReachedError):
        return (
            f"{exc.version_id!r} is scheduled for {when(exc.activation_time)}; "
            "'rule-engine controller' activates it then"
        )
    if isinstance(exc, PolicyMismatchError):
        return (
            f"bundle {exc.bundle_id!r} is another policy than the one this deployment serves "
            f"({exc.serving_bundle_id!r}, version {exc.serving_version_id!r}): deploy it as a deployment of its own "
            f"('rule-engine --deployment {exc.bundle_id} deploy ...'), or with --replace-policy if replacing that "
            "policy is meant"
        )
    return cli_text(str(exc))


def cli_text(message: str) -> str:
    """A library message (an error, a rollout's "holding" reason) with Python spellings replaced by commands."""
    for python, command in PYTHON_TO_CLI:
        message = message.replace(python, command)
    return message
