"""What every command shares: the context, the group, one-line errors and exit codes, options.

How commands print (escaping, wrapping, JSON) is :mod:`rule_engine.cli.output`; how library errors
are worded for CLI users is :mod:`rule_engine.cli.hints`.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import click

from rule_engine.bundle.signing import TrustPolicy
from rule_engine.cli.completion import complete_deployments
from rule_engine.cli.hints import cli_message
from rule_engine.cli.logs import cli_logging, level_for
from rule_engine.cli.output import clean
from rule_engine.deployment.manager import DeploymentManager
from rule_engine.errors import (
    BundleTestFailure,
    BundleTrustError,
    BundleValidationError,
    RuleEngineError,
    StoreError,
)
from rule_engine.stores._pg_conninfo import redact_url
from rule_engine.stores.base import StateStore, open_deployment, store_url_from_env
from rule_engine.stores.deployments import check_name

__all__ = [
    "CliContext",
    "CommandFailed",
    "by_option",
    "cli",
    "default_actor",
    "json_option",
    "managed",
    "os_account",
    "os_error_line",
]

_DEBUG_ENV = "RULE_ENGINE_DEBUG"
_MISSING = object()
SIGNING_EXTRA_HINT = "ed25519 keys need the signing extra: pip install 'rule_engine[signing]'"


class CommandFailed(Exception):
    """A command finished its output but failed; ``message`` is the one stderr line."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class CliContext:
    """What every command shares: the store URL, output mode, and the manager once opened."""

    store_url: str | None = None
    deployment: str | None = None  # --deployment / $RULE_ENGINE_DEPLOYMENT (None: the only one)
    trust_file: str | None = None
    manager: DeploymentManager | None = None  # preset (tests, embedding) or opened on first use
    owns_manager: bool = False
    others: dict[str, DeploymentManager] = field(default_factory=dict)  # open_each's, by deployment

    @property
    def url(self) -> str:
        """The store URL in effect."""
        return store_url_from_env(self.store_url)

    @property
    def shown_url(self) -> str:
        """The store URL as printed: any password masked (``postgresql://user:***@host/db``)."""
        return redact_url(self.url)

    def trust(self, *, refuse_downgrade: bool = False) -> TrustPolicy | None:
        """The trust policy from ``--trust`` / ``$RULE_ENGINE_TRUST``, or None; a bad file fails the command.

        ``refuse_downgrade`` turns the policy's downgrade refusal on (the file may turn it on too).
        """
        if self.trust_file is None:
            return None
        try:
            policy = TrustPolicy.from_file(self.trust_file)
        except ImportError:
            raise CommandFailed(f"trust file {self.trust_file!r}: {SIGNING_EXTRA_HINT}") from None
        except ValueError as exc:
            raise CommandFailed(str(exc)) from None
        return policy.with_downgrade_refused() if refuse_downgrade else policy

    def open(self, *, follow: bool = False, create: bool = True, **kwargs: Any) -> DeploymentManager:
        """The manager on the store (opened once, closed when the command ends).

        Read-only commands pass ``create=False``: a store that does not exist is an error, never created.
        A preset manager is used as it is (following or not, as its owner set it up); a keyword that
        would configure it differently from how it is (``trust=``, ``auto_rollback=``, ...) is refused
        rather than ignored.
        """
        if "trust" not in kwargs and self.trust_file is not None:  # a store requiring signatures needs it (D25)
            kwargs["trust"] = self.trust()
        if self.manager is not None:
            differ = sorted(
                name for name, wanted in kwargs.items() if getattr(self.manager.config, name, _MISSING) != wanted
            )
            if differ:
                raise CommandFailed(
                    f"the preset manager is configured differently from what this command needs "
                    f"({', '.join(differ)}); configure it so, or let the command open the store"
                )
            return self.manager
        try:
            manager = DeploymentManager.open(
                self.url, deployment=self.deployment, follow=follow, create=create, **kwargs
            )
        except ImportError as exc:
            raise StoreError(f"cannot open store {self.shown_url!r}: its backend is not available ({exc})") from exc
        self.manager = manager
        self.owns_manager = True
        return manager

    def store(self, *, create: bool = False) -> StateStore:
        """The store handle on the deployment in effect (``--deployment``, else the only one); the caller closes it."""
        try:
            return open_deployment(self.url, self.deployment, create=create)
        except ImportError as exc:
            raise StoreError(f"cannot open store {self.shown_url!r}: its backend is not available ({exc})") from exc

    def open_each(self, **kwargs: Any) -> dict[str, DeploymentManager]:
        """A manager per deployment to act on, by name: the named (or preset) one, else each the store holds.

        Each is opened once (closed with the context); call again to pick up deployments added since. A
        store that holds none yet gives its one unbound manager (under ``""``).
        """
        if self.deployment is not None or (self.manager is not None and not self.owns_manager):
            manager = self.open(**kwargs)
            return {manager.store.deployment or self.deployment or "": manager}
        with closing(self.store(create=True)) as opened:  # as open() would: a writing command creates the store
            names = opened.deployment_names()
        if not names:
            manager = self.open(**kwargs)
            return {manager.store.deployment or "": manager}
        found = {self.manager.store.deployment or "": self.manager} if self.manager is not None else {}
        for name in names:
            if name not in found and name not in self.others:
                self.others[name] = DeploymentManager.open(self.url, deployment=name, **kwargs)
        return {name: m for name, m in {**found, **self.others}.items() if name}

    def close(self) -> None:
        """Close the manager if this context opened it."""
        if self.manager is not None and self.owns_manager:
            manager, self.manager, self.owns_manager = self.manager, None, False
            manager.close()
        others, self.others = self.others, {}
        for manager in others.values():
            manager.close()


class _RuleEngineCLI(click.Group):
    """A group whose ``main`` turns every failure into one ``error:`` line and an exit status."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code = _run_guarded(lambda: super(_RuleEngineCLI, self).main(args, prog_name, complete_var, False, **extra))
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # click would exit 1 for it; a closed reader ('| head') is not a failure
            raise _OutputClosed() from None


class _OutputClosed(Exception):
    """Whoever read the output stopped reading (``rule-engine history | head -1``)."""


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit does not fail again on the closed pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (CliRunner)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _run_guarded(run: Callable[[], Any]) -> int:
    """Run the CLI; map every outcome to an exit status, printing one ``error:`` line on failure."""
    try:
        result = run()
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (_OutputClosed, BrokenPipeError):
        _silence_stdout()
        return 0
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return _fail(exc.format_message() + hint, 2)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        return _fail("interrupted", 130)
    except CommandFailed as exc:
        return _fail(str(exc), exc.exit_code)
    except BundleValidationError as exc:
        return _fail(_bundle_error_line(exc), 1)
    except RuleEngineError as exc:
        return _fail(cli_message(exc), 1)
    except OSError as exc:
        return _fail(os_error_line(exc), 1)
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] == "cryptography" or "rule_engine[signing]" in str(exc):
            return _fail(SIGNING_EXTRA_HINT, 1)
        return _fail(f"a module is missing: {exc} (reinstall rule_engine)", 1)
    except Exception as exc:
        if os.environ.get(_DEBUG_ENV):
            traceback.print_exc()
        return _fail(
            f"unexpected {type(exc).__name__}: {exc} (re-run with {_DEBUG_ENV}=1 to see the traceback)",
            1,
        )
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _fail(message: str, code: int) -> int:
    with suppress(OSError):  # stderr gone too: the exit status is all that is left
        click.echo("error: " + clean(" ".join(message.split())), err=True)
    return code


def _bundle_error_line(exc: BundleValidationError) -> str:
    where = f"{exc.source}: " if exc.source else ""
    if isinstance(exc, BundleTrustError) and exc.problems:  # the message already says why: unsigned, ...
        return f"{where}{exc.problems[0].message}"
    kind = "bundle tests failed" if isinstance(exc, BundleTestFailure) else "invalid bundle"
    if not exc.problems:
        return f"{where}{kind}"
    more = len(exc.problems) - 1
    tail = f" (and {more} more problem{'s' if more != 1 else ''}; 'rule-engine validate' lists them)" if more else ""
    return f"{where}{kind}: {exc.problems[0]}{tail}"


def os_error_line(exc: OSError) -> str:
    """One line for an OS error: ``FILE: reason`` when it names a file."""
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def default_actor() -> str:
    """Who acts when ``--by`` is not given: the OS user name (``cli`` when there is none)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "cli"


def os_account() -> str:
    """``user@host`` of the OS account running the command (recorded next to ``--by`` in the audit)."""
    try:
        host = socket.gethostname() or "localhost"
    except OSError:  # pragma: no cover - gethostname does not fail on the platforms we run on
        host = "localhost"
    return f"{default_actor()}@{host}"


@contextmanager
def managed(ctx: click.Context) -> Iterator[CliContext]:
    """The command's :class:`CliContext`; the manager it opened is closed when the block ends."""
    state: CliContext = ctx.ensure_object(CliContext)
    try:
        yield state
    finally:
        state.close()


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
by_option = click.option(
    "--by", "actor", default=None, metavar="WHO", help="Who does this (audit trail); default: $USER."
)


@click.group(cls=_RuleEngineCLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    "store_url",
    default=None,
    metavar="URL",
    help="State store: sqlite:///path/state.db or memory://  [default: $RULE_ENGINE_STORE, else sqlite:///.rule-engine/state.db]",
)
@click.option(
    "--deployment",
    "deployment",
    default=None,
    envvar="RULE_ENGINE_DEPLOYMENT",
    metavar="NAME",
    shell_complete=complete_deployments,
    help="The deployment (policy) to act on; optional when the store holds one  [default: $RULE_ENGINE_DEPLOYMENT]",
)
@click.option(
    "--trust",
    "trust_file",
    default=None,
    envvar="RULE_ENGINE_TRUST",
    metavar="FILE",
    help="JSON trust file: deploy and validate then refuse bundles without a trusted BUNDLE.sig  [default: $RULE_ENGINE_TRUST]",
)
@click.option("-v", "--verbose", count=True, help="Log library events to stderr (-v info, -vv debug).")
@click.version_option(package_name="rule_engine", prog_name="rule-engine")
@click.pass_context
def cli(
    ctx: click.Context, store_url: str | None, deployment: str | None, trust_file: str | None, verbose: int
) -> None:
    """Ship rule bundles to live evaluators: validate, deploy by strategy, watch health, roll back."""
    state = ctx.ensure_object(CliContext)
    if store_url is not None:
        state.store_url = store_url
    if deployment:
        try:
            state.deployment = check_name(deployment)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--deployment'") from None
    if trust_file:
        state.trust_file = trust_file
    ctx.with_resource(cli_logging(level_for(verbose)))
