"""What every command shares: the context, the group, one-line errors and exit codes, output, options."""

from __future__ import annotations

import getpass
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click

from rule_engine.bundle.signing import (
    TrustPolicy,
)
from rule_engine.cli.logs import cli_logging, level_for
from rule_engine.deployment.manager import DeploymentManager
from rule_engine.errors import BundleTrustError, BundleValidationError, RuleEngineError, StoreError
from rule_engine.stores.base import store_url_from_env

_DEBUG_ENV = "RULE_ENGINE_DEBUG"
_BAR_WIDTH = 30


class CommandFailed(Exception):
    """A command finished its output but failed; ``message`` is the one stderr line."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class CliContext:
    """What every command shares: the store URL, output mode, and the manager once opened."""

    store_url: str | None = None
    trust_file: str | None = None
    manager: DeploymentManager | None = None  # preset (tests, embedding) or opened on first use
    owns_manager: bool = False
    opened: list[DeploymentManager] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The store URL in effect."""
        return store_url_from_env(self.store_url)

    def trust(self) -> TrustPolicy | None:
        """The trust policy from ``--trust`` / ``$RULE_ENGINE_TRUST``, or None; a bad file fails the command."""
        if self.trust_file is None:
            return None
        try:
            return TrustPolicy.from_file(self.trust_file)
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise CommandFailed(f"trust file {self.trust_file!r}: {exc}") from None
        except ValueError as exc:
            raise CommandFailed(str(exc)) from None

    def open(self, *, follow: bool = False, **kwargs: Any) -> DeploymentManager:
        """The manager on the store (opened once, closed when the command ends)."""
        if self.manager is not None:
            return self.manager
        try:
            manager = DeploymentManager.open(self.url, follow=follow, **kwargs)
        except ImportError as exc:
            raise StoreError(f"cannot open store {self.url!r}: its backend is not available ({exc})") from exc
        self.manager = manager
        self.owns_manager = True
        return manager

    def close(self) -> None:
        """Close the manager if this context opened it."""
        if self.manager is not None and self.owns_manager:
            manager, self.manager, self.owns_manager = self.manager, None, False
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


def _run_guarded(run: Callable[[], Any]) -> int:
    """Run the CLI; map every outcome to an exit status, printing one ``error:`` line on failure."""
    try:
        result = run()
    except click.exceptions.Exit as exc:
        return exc.exit_code
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
        return _fail(str(exc), 1)
    except OSError as exc:
        return _fail(_os_error_line(exc), 1)
    except Exception as exc:
        if os.environ.get(_DEBUG_ENV):
            traceback.print_exc()
        return _fail(
            f"unexpected {type(exc).__name__}: {exc} (re-run with {_DEBUG_ENV}=1 to see the traceback)",
            1,
        )
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _fail(message: str, code: int) -> int:
    click.echo("error: " + " ".join(message.split()), err=True)
    return code


def _bundle_error_line(exc: BundleValidationError) -> str:
    where = f"{exc.source}: " if exc.source else ""
    if isinstance(exc, BundleTrustError) and exc.problems:  # the message already says why: unsigned, ...
        return f"{where}{exc.problems[0].message}"
    kind = "bundle tests failed" if type(exc).__name__ == "BundleTestFailure" else "invalid bundle"
    if not exc.problems:
        return f"{where}{kind}"
    more = len(exc.problems) - 1
    tail = f" (and {more} more problem{'s' if more != 1 else ''}; 'rule-engine validate' lists them)" if more else ""
    return f"{where}{kind}: {exc.problems[0]}{tail}"


def _os_error_line(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "cli"


def _emit(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
    else:
        human()


def _bar(percentage: float, width: int = _BAR_WIDTH) -> str:
    filled = round(width * max(0.0, min(percentage, 100.0)) / 100)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


@contextmanager
def _managed(ctx: click.Context) -> Iterator[CliContext]:
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
def cli(ctx: click.Context, store_url: str | None, trust_file: str | None, verbose: int) -> None:
    """Ship rule bundles to live evaluators: validate, deploy by strategy, watch health, roll back."""
    state = ctx.ensure_object(CliContext)
    if store_url is not None:
        state.store_url = store_url
    if trust_file:
        state.trust_file = trust_file
    ctx.with_resource(cli_logging(level_for(verbose)))
