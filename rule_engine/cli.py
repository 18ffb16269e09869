"""The ``rule-engine`` command line: validate, deploy, watch and roll back rule bundles.

Every command prints for people by default and one JSON object with ``--json``. On success the exit
status is 0; on any failure it is 1 (2 for a usage error) and stderr holds exactly one line starting
with ``error:``, never a traceback (set ``RULE_ENGINE_DEBUG=1`` to see one for unexpected errors).
The state store is ``--store URL``, else ``$RULE_ENGINE_STORE``, else ``sqlite:///.rule-engine/state.db``.
With ``--trust FILE`` (else ``$RULE_ENGINE_TRUST``) ``deploy`` and ``validate`` refuse bundles without a
trusted signature (``BUNDLE.sig``); ``keygen`` and ``sign`` make keys and signatures (docs/cli.md).
"""

from __future__ import annotations

import base64
import binascii
import getpass
import json
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from rule_engine.bundle import RuleBundle, load_bundle
from rule_engine.bundle_tests import run_bundle_tests
from rule_engine.clock import iso
from rule_engine.engine import RuleEngine
from rule_engine.errors import BundleTrustError, BundleValidationError, RuleEngineError, StoreError
from rule_engine.logging_setup import cli_logging, level_for
from rule_engine.manager import DeploymentInfo, DeploymentManager, RolloutStatus, TickReport
from rule_engine.signing import (
    Ed25519Key,
    HmacKey,
    Signature,
    SigningKey,
    TrustPolicy,
    find_signature,
    sign_bundle,
    write_signature,
)
from rule_engine.stores.base import store_url_from_env
from rule_engine.strategies import ABTest, BlueGreen, Canary, InvalidStrategyError, Scheduled, Strategy

__all__ = ["cli", "main"]

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


# --- validate ----------------------------------------------------------------------------------------


@cli.command()
@click.argument("bundles", nargs=-1, required=True, metavar="BUNDLE...")
@json_option
@click.pass_context
def validate(ctx: click.Context, bundles: tuple[str, ...], as_json: bool) -> None:
    """Validate bundle files and run their own tests (with --trust: check their signatures first)."""
    trust = ctx.ensure_object(CliContext).trust()
    results = [_validate_one(path, trust) for path in bundles]
    failed = [r for r in results if not r["ok"]]

    def human() -> None:
        for r in results:
            if r["ok"]:
                signed = f"; signed by {r['signature']['alg']}:{r['signature']['key_id']}" if trust else ""
                click.echo(
                    f"OK    {r['path']}  ({r['bundle_id']} {r['version']}: {r['rules']} rules, "
                    f"{r['tests']} tests passed{signed})"
                )
            else:
                count = len(r["problems"])
                click.echo(f"FAIL  {r['path']}  ({count} problem{'s' if count != 1 else ''})")
                for problem in r["problems"]:
                    click.echo(f"      {problem['path']}: {problem['message']}")

    _emit(as_json, {"ok": not failed, "bundles": results}, human)
    if failed:
        first = failed[0]
        raise CommandFailed(
            f"{len(failed)} of {len(results)} bundle{'s' if len(results) != 1 else ''} invalid; "
            f"first: {first['path']}: {first['problems'][0]['path']}: {first['problems'][0]['message']}"
        )


def _validate_one(path: str, trust: TrustPolicy | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"path": path, "ok": False, "bundle_id": None, "version": None, "digest": None}
    if trust is not None:
        result["signature"] = {"status": "unchecked", "alg": None, "key_id": None}
    try:
        bundle = load_bundle(path)
        result.update(bundle_id=bundle.bundle_id, version=bundle.version, digest=bundle.digest)
        result.update(rules=len(bundle.rules), tests=len(bundle.tests))
        if trust is not None:  # before the bundle's tests run
            result["signature"]["status"] = "refused"
            signature = find_signature(path)
            result["signature"].update(
                status="refused" if signature else "unsigned",
                alg=signature.alg if signature else None,
                key_id=signature.key_id if signature else None,
            )
            trust.verify(bundle, signature)
            result["signature"]["status"] = "trusted"
        run_bundle_tests(bundle)
    except BundleValidationError as exc:
        result["problems"] = [{"path": p.path, "message": p.message} for p in exc.problems] or [
            {"path": "$", "message": str(exc)}
        ]
        return result
    except OSError as exc:
        result["problems"] = [{"path": "$", "message": _os_error_line(exc)}]
        return result
    result["ok"] = True
    result["problems"] = []
    return result


# --- deploy ----------------------------------------------------------------------------------------


def _parse_stages(value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected percentages like 10,25,50,100, got {value!r}", param_hint="--stages"
        ) from None


def _parse_time(value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise click.BadParameter(f"{value!r} is not a time", param_hint="--at")
        return seconds
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither ISO 8601 (e.g. 2030-01-01T09:00:00+00:00) nor unix seconds", param_hint="--at"
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no timezone; add one, e.g. {text}+00:00", param_hint="--at")
    return moment.timestamp()


def _build_strategy(
    strategy: str | None,
    stages: str | None,
    stage_duration: float | None,
    split_ratio: float | None,
    test_duration: float | None,
    at: str | None,
) -> Strategy:
    canary_opts = stages is not None or stage_duration is not None
    ab_opts = split_ratio is not None or test_duration is not None
    if strategy is None:
        strategy = (
            "scheduled" if at is not None else "canary" if canary_opts else "ab-test" if ab_opts else "blue-green"
        )
    given = {
        "--stages/--stage-duration": canary_opts and strategy != "canary",
        "--split-ratio/--test-duration": ab_opts and strategy != "ab-test",
        "--at": at is not None and strategy != "scheduled",
    }
    wrong = [name for name, bad in given.items() if bad]
    if wrong:
        raise click.UsageError(f"{', '.join(wrong)} do(es) not apply to --strategy {strategy}")
    try:
        if strategy == "canary":
            kwargs: dict[str, Any] = {}
            parsed = _parse_stages(stages)
            if parsed is not None:
                kwargs["stages"] = parsed
            if stage_duration is not None:
                kwargs["stage_duration_secs"] = stage_duration
            return Canary(**kwargs)
        if strategy == "ab-test":
            ab: dict[str, Any] = {}
            if split_ratio is not None:
                ab["split_ratio"] = split_ratio
            if test_duration is not None:
                ab["test_duration_secs"] = test_duration
            return ABTest(**ab)
        if strategy == "scheduled":
            when = _parse_time(at)
            if when is None:
                raise click.UsageError("--strategy scheduled needs --at TIME")
            return Scheduled(when)
    except InvalidStrategyError as exc:
        raise click.UsageError(str(exc)) from None
    return BlueGreen()


@cli.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option(
    "--strategy",
    type=click.Choice(["blue-green", "canary", "ab-test", "scheduled"]),
    default=None,
    help="How traffic moves [default: blue-green, or implied by the options below].",
)
@click.option("--stages", default=None, metavar="10,25,50,100", help="Canary stages in percent, ending at 100.")
@click.option(
    "--stage-duration", type=float, default=None, metavar="SECONDS", help="Canary: how long each stage holds."
)
@click.option(
    "--split-ratio", type=float, default=None, metavar="R", help="A/B test: share kept by the stable version (A)."
)
@click.option("--test-duration", type=float, default=None, metavar="SECONDS", help="A/B test: how long it runs.")
@click.option("--at", default=None, metavar="TIME", help="Scheduled: ISO 8601 with timezone, or unix seconds.")
@click.option("--supersede", is_flag=True, help="Roll back a rollout in progress and start this one instead.")
@by_option
@json_option
@click.pass_context
def deploy(
    ctx: click.Context,
    bundle: str,
    strategy: str | None,
    stages: str | None,
    stage_duration: float | None,
    split_ratio: float | None,
    test_duration: float | None,
    at: str | None,
    supersede: bool,
    actor: str | None,
    as_json: bool,
) -> None:
    """Prepare a bundle as a new version and start serving it by its strategy (scheduled: just prepare)."""
    chosen = _build_strategy(strategy, stages, stage_duration, split_ratio, test_duration, at)
    who = actor or _default_actor()
    with _managed(ctx) as state:
        trust = state.trust()
        source: Path | RuleBundle = Path(bundle)
        signature: Signature | None = None
        if trust is not None:  # refuse an untrusted bundle before the store is even opened
            source = load_bundle(bundle)
            try:
                signature = find_signature(bundle)
                trust.verify(source, signature)
            except BundleTrustError as exc:
                raise exc.with_source(bundle) from None
        manager = state.open(trust=trust) if trust is not None else state.open()
        version_id = manager.prepare_deployment(source, chosen, deployed_by=who, signature=signature)
        if not isinstance(chosen, Scheduled):
            try:
                manager.activate_deployment(version_id, actor=who, supersede=supersede)
            except RuleEngineError as exc:
                raise CommandFailed(f"{exc} (version {version_id} is prepared and left staged)") from exc
        info = manager.get_deployment_info(version_id)
        assert info is not None
        data = {
            "version_id": version_id,
            "state": info.state.value,
            "strategy": chosen.to_dict(),
            "percentage": info.current_percentage,
            "store": state.url,
        }

        def human() -> None:
            click.echo(f"deployed {version_id}")
            click.echo(f"  strategy: {chosen.describe()}")
            click.echo(f"  state:    {info.state.value}, {info.current_percentage:g}% of traffic")
            if isinstance(chosen, Scheduled):
                click.echo("  the controller ('rule-engine controller') activates it when due")
            elif isinstance(chosen, Canary):
                click.echo("  the controller advances it stage by stage while it stays healthy")

        _emit(as_json, data, human)


# --- keygen and sign ----------------------------------------------------------------------------------

_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_FIELD = {"ed25519": "private_key", "hmac-sha256": "secret"}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` (never overwriting) and write ``text``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), mode)
        out.write(text)


def _key_json(data: dict[str, str]) -> str:
    return json.dumps(data, indent=2) + "\n"


def _read_signing_key(path: str) -> SigningKey:
    """The signing key in a ``keygen`` key file; CommandFailed naming the file and what is wrong."""
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise CommandFailed(f"key file {path!r}: cannot read it: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):
        raise CommandFailed(f"key file {path!r}: not JSON (expected a file written by 'rule-engine keygen')") from None
    alg = data.get("alg") if isinstance(data, dict) else None
    if alg not in _KEY_FIELD:
        raise CommandFailed(f"key file {path!r}: 'alg' must be one of {', '.join(_KEY_FIELD)}")
    if "public_key" in data:
        raise CommandFailed(f"key file {path!r}: this is a public key (.pub); sign with the private .key file")
    field_name = _KEY_FIELD[alg]
    key_id, text = data.get("key_id"), data.get(field_name)
    if not isinstance(key_id, str) or not key_id or not isinstance(text, str):
        raise CommandFailed(f"key file {path!r}: needs a 'key_id' and a base64 {field_name!r}")
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519Key.from_private_bytes(key_id, raw) if alg == "ed25519" else HmacKey(key_id, raw)
    except (binascii.Error, ValueError) as exc:
        raise CommandFailed(f"key file {path!r}: bad {field_name!r}: {exc}") from None


@cli.command()
@click.option(
    "--alg",
    type=click.Choice(["ed25519", "hmac-sha256"]),
    default="ed25519",
    show_default=True,
    help="ed25519: a key pair (consumers hold only the public key); hmac-sha256: one shared secret.",
)
@click.option("--key-id", required=True, metavar="ID", help="The key's name, recorded in every signature.")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), metavar="DIR", help="Where to write ID.key"
)
@json_option
def keygen(alg: str, key_id: str, out_dir: str, as_json: bool) -> None:
    """Make a signing key: DIR/ID.key (private, mode 0600) and, for ed25519, DIR/ID.pub; print the trust entry."""
    if not _KEY_ID.fullmatch(key_id):
        raise click.BadParameter(
            f"{key_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            param_hint="--key-id",
        )
    directory = Path(out_dir)
    private_path = directory / f"{key_id}.key"
    public_path = directory / f"{key_id}.pub" if alg == "ed25519" else None
    for path in (private_path, public_path):
        if path is not None and (path.exists() or path.is_symlink()):
            raise CommandFailed(
                f"{path}: already exists; refusing to overwrite a key (choose another --key-id or --out)"
            )
    if alg == "ed25519":
        from cryptography.hazmat.primitives import serialization

        pair = Ed25519Key.generate(key_id)
        private = pair.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        trusted = _b64(pair.public_bytes())
    else:
        private = HmacKey.generate(key_id).secret
        trusted = _b64(private)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_new(private_path, _key_json({"alg": alg, "key_id": key_id, _KEY_FIELD[alg]: _b64(private)}), 0o600)
    if public_path is not None:
        _write_new(public_path, _key_json({"alg": alg, "key_id": key_id, "public_key": trusted}), 0o644)
    snippet = {alg: {key_id: trusted}}
    data = {
        "alg": alg,
        "key_id": key_id,
        "private_key_file": str(private_path),
        "public_key_file": str(public_path) if public_path else None,
        "trust": snippet,
    }

    def human() -> None:
        click.echo(f"wrote {private_path}  (private, mode 0600: keep it secret)")
        if public_path is not None:
            click.echo(f"wrote {public_path}  (public)")
        click.echo("trust file entry (merge into the file given to --trust / $RULE_ENGINE_TRUST):")
        click.echo("  " + json.dumps(snippet))
        if alg == "hmac-sha256":
            click.echo("  it holds the shared secret: keep the trust file private (mode 0600) too")
        click.echo(f"sign with: rule-engine sign BUNDLE --key {private_path}")

    _emit(as_json, data, human)


@cli.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--key", "key_file", required=True, metavar="KEYFILE", help="A private key file from 'keygen'.")
@json_option
def sign(bundle: str, key_file: str, as_json: bool) -> None:
    """Validate a bundle (and run its tests), sign its canonical form, and write BUNDLE.sig beside it."""
    key = _read_signing_key(key_file)
    parsed = load_bundle(bundle)
    try:
        run_bundle_tests(parsed)
    except BundleValidationError as exc:
        raise exc.with_source(bundle) from None
    signature = sign_bundle(parsed, key)
    path = write_signature(signature, bundle)
    data = {
        "bundle": bundle,
        "bundle_id": parsed.bundle_id,
        "version": parsed.version,
        "digest": signature.digest,
        "alg": signature.alg,
        "key_id": signature.key_id,
        "signature_file": str(path),
    }

    def human() -> None:
        click.echo(f"signed {bundle}  ({parsed.bundle_id} {parsed.version})")
        click.echo(f"  key:       {signature.alg}:{signature.key_id}")
        click.echo(f"  digest:    {signature.digest}")
        click.echo(f"  signature: {path}")

    _emit(as_json, data, human)


# --- status ----------------------------------------------------------------------------------------


def _bar(percentage: float, width: int = _BAR_WIDTH) -> str:
    filled = round(width * max(0.0, min(percentage, 100.0)) / 100)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _short_health(info: DeploymentInfo) -> str:
    m = info.health_metrics
    verdict = {True: "healthy", False: "UNHEALTHY", None: "no verdict"}[m.verdict]
    return f"{m.total_evaluations:,} evals, {m.error_rate:.1%} errors, {verdict}"


@cli.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """What serves now, the rollout in progress (as a bar, and why it holds), and health per version."""
    with _managed(ctx) as state:
        manager = state.open()
        active = manager.get_active_version_id()
        rollout = manager.get_rollout_status()
        infos = [i for i in (manager.get_deployment_info(v) for v in manager.get_deployment_history()) if i]
        serving = {active} | ({rollout.version_id} if rollout else set())
        data = {
            "store": state.url,
            "active_version": active,
            "rollout": rollout.to_dict() if rollout else None,
            "health": {i.version_id: i.health_metrics.to_dict() for i in infos if i.version_id in serving},
            "versions": [
                {
                    "version_id": i.version_id,
                    "state": i.state.value,
                    "percentage": i.current_percentage,
                    "strategy": i.strategy.kind,
                    "healthy": i.health_metrics.verdict,
                }
                for i in infos
            ],
        }
        _emit(as_json, data, lambda: _print_status(state.url, active, rollout, infos))


def _print_status(url: str, active: str | None, rollout: RolloutStatus | None, infos: list[DeploymentInfo]) -> None:
    click.echo(f"store:   {url}")
    click.echo(f"active:  {active or '(none: nothing deployed yet)'}")
    if rollout is None:
        click.echo("rollout: none in progress")
    else:
        stage = f", stage {rollout.stage}/{len(rollout.stages)}" if rollout.stages else ""
        click.echo(f"rollout: {rollout.strategy} of {rollout.version_id}{stage} (vs {rollout.stable_version_id})")
        click.echo(f"         {_bar(rollout.percentage)} {rollout.percentage:g}% of traffic")
        if rollout.verdict.reason != rollout.holding:
            click.echo(f"         health: {rollout.verdict.reason}")
        if rollout.holding:
            click.echo(f"         holding: {rollout.holding}")
        elif rollout.next_step_at is not None:
            click.echo(f"         next step: {iso(rollout.next_step_at)} (when the controller ticks)")
    if infos:
        click.echo("versions:")
        for info in infos:
            click.echo(
                f"  {info.version_id:<44} {info.state.value:<12} {info.current_percentage:>6g}%  {_short_health(info)}"
            )


# --- control operations -------------------------------------------------------------------------------


@cli.command()
@by_option
@json_option
@click.pass_context
def advance(ctx: click.Context, actor: str | None, as_json: bool) -> None:
    """Move the canary to its next stage if the current one is due (and the candidate not unhealthy)."""
    with _managed(ctx) as state:
        manager = state.open()
        moved = manager.advance_rollout(actor=actor or _default_actor())
        rollout = manager.get_rollout_status()
        active = manager.get_active_version_id()
        data = {
            "advanced": moved,
            "active_version": active,
            "rollout": rollout.to_dict() if rollout else None,
        }

        def human() -> None:
            if rollout is None:
                click.echo(f"rollout complete: {active} serves all traffic")
            elif moved:
                click.echo(f"advanced {rollout.version_id} to {rollout.percentage:g}% {_bar(rollout.percentage)}")
            else:
                click.echo(f"not advanced: {rollout.holding or rollout.verdict.reason}")

        _emit(as_json, data, human)


@cli.command()
@by_option
@json_option
@click.pass_context
def promote(ctx: click.Context, actor: str | None, as_json: bool) -> None:
    """Finish the canary now: the candidate takes all traffic."""
    with _managed(ctx) as state:
        version_id = state.open().promote(actor=actor or _default_actor())
        _emit(
            as_json,
            {"version_id": version_id, "active_version": version_id, "state": "active"},
            lambda: click.echo(f"promoted {version_id}: it serves all traffic"),
        )


@cli.command()
@click.option("--reason", default="manual rollback", help="Why (recorded in the audit trail).")
@by_option
@json_option
@click.pass_context
def rollback(ctx: click.Context, reason: str, actor: str | None, as_json: bool) -> None:
    """Return traffic to the stable version (during a rollout) or to the previous version."""
    with _managed(ctx) as state:
        manager = state.open()
        before = manager.get_rollout_status()
        rolled = before.version_id if before else manager.get_active_version_id()
        serving = manager.rollback(actor=actor or _default_actor(), reason=reason)
        _emit(
            as_json,
            {"rolled_back": rolled, "active_version": serving},
            lambda: click.echo(f"rolled back {rolled}; {serving} serves all traffic"),
        )


@cli.command()
@click.argument("winner")
@by_option
@json_option
@click.pass_context
def conclude(ctx: click.Context, winner: str, actor: str | None, as_json: bool) -> None:
    """End the A/B test: WINNER (the A or B version id) serves all traffic."""
    with _managed(ctx) as state:
        version_id = state.open().conclude_experiment(winner, actor=actor or _default_actor())
        _emit(
            as_json,
            {"winner": version_id, "active_version": version_id},
            lambda: click.echo(f"concluded the A/B test: {version_id} serves all traffic"),
        )


# --- history and diff -----------------------------------------------------------------------------


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Audit entries to show.")
@json_option
@click.pass_context
def history(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Versions kept in history with their state, and the audit trail of every transition."""
    with _managed(ctx) as state:
        manager = state.open()
        infos = [i for i in (manager.get_deployment_info(v) for v in manager.get_deployment_history()) if i]
        audit = manager.audit_log(limit=limit)
        data = {"versions": [i.to_dict() for i in infos], "audit": [e.to_dict() for e in audit]}

        def human() -> None:
            if not infos:
                click.echo("no versions yet")
                return
            click.echo("versions (oldest first):")
            for i in infos:
                click.echo(
                    f"  {i.version_id:<44} {i.state.value:<12} {i.strategy.describe():<40} "
                    f"by {i.deployed_by}, {iso(i.created_at)}"
                )
                if i.failure_reason:
                    click.echo(f"      reason: {i.failure_reason}")
            click.echo("audit trail:")
            for e in audit:
                why = f"  ({e.reason})" if e.reason else ""
                click.echo(
                    f"  {iso(e.at)}  {e.action:<10} {e.version_id:<44} {e.from_state or '-'} -> {e.to_state}"
                    f"  by {e.actor}{why}"
                )

        _emit(as_json, data, human)


def _load_side(state: CliContext, ref: str) -> tuple[str, RuleBundle]:
    path = Path(ref)
    if path.is_file() or ref.endswith(".json"):
        return str(path), load_bundle(path)
    return ref, state.open().bundle_of(ref)


def _rule_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def bundle_diff(a: RuleBundle, b: RuleBundle) -> dict[str, Any]:
    """Rules added, removed and changed (by rule id) from bundle ``a`` to bundle ``b``."""
    old = {r.id: r.model_dump(mode="json", exclude_unset=True) for r in a.rules}
    new = {r.id: r.model_dump(mode="json", exclude_unset=True) for r in b.rules}
    changed = [
        {"rule_id": rid, "fields": _rule_changes(old[rid], new[rid]), "from": old[rid], "to": new[rid]}
        for rid in old
        if rid in new and old[rid] != new[rid]
    ]
    settings = [
        name
        for name in ("default", "on_error")
        if (getattr(a, name).model_dump(mode="json") if getattr(a, name) else None)
        != (getattr(b, name).model_dump(mode="json") if getattr(b, name) else None)
    ]
    return {
        "added": [rid for rid in new if rid not in old],
        "removed": [rid for rid in old if rid not in new],
        "changed": changed,
        "unchanged": sum(1 for rid in old if rid in new and old[rid] == new[rid]),
        "settings_changed": settings,
    }


@cli.command()
@click.argument("left", metavar="VERSION_OR_BUNDLE")
@click.argument("right", metavar="VERSION_OR_BUNDLE")
@json_option
@click.pass_context
def diff(ctx: click.Context, left: str, right: str, as_json: bool) -> None:
    """Rules added, removed and changed between two bundles (a file path or a stored version id each)."""
    with _managed(ctx) as state:
        left_name, a = _load_side(state, left)
        right_name, b = _load_side(state, right)
    result = bundle_diff(a, b)
    data = {
        "from": {"ref": left_name, "bundle_id": a.bundle_id, "version": a.version, "digest": a.digest},
        "to": {"ref": right_name, "bundle_id": b.bundle_id, "version": b.version, "digest": b.digest},
        **result,
    }

    def human() -> None:
        click.echo(f"--- {left_name} ({a.bundle_id} {a.version})")
        click.echo(f"+++ {right_name} ({b.bundle_id} {b.version})")
        for rid in result["added"]:
            click.echo(f"+ {rid}")
        for rid in result["removed"]:
            click.echo(f"- {rid}")
        for change in result["changed"]:
            click.echo(f"~ {change['rule_id']}  ({', '.join(change['fields'])} changed)")
        for name in result["settings_changed"]:
            click.echo(f"~ bundle {name} decision changed")
        total = len(result["added"]) + len(result["removed"]) + len(result["changed"])
        click.echo(
            f"{len(result['added'])} added, {len(result['removed'])} removed, {len(result['changed'])} changed, "
            f"{result['unchanged']} unchanged" + ("" if total or result["settings_changed"] else " (identical rules)")
        )

    _emit(as_json, data, human)


# --- evaluate ----------------------------------------------------------------------------------------


def _read_event(text: str) -> dict[str, Any]:
    where = "EVENT_JSON"
    if text.startswith("@"):
        where = text[1:]
        try:
            text = sys.stdin.read() if where == "-" else Path(where).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandFailed(f"cannot read event file: {_os_error_line(exc)}") from None
        except UnicodeDecodeError as exc:
            raise CommandFailed(f"{where}: event is not UTF-8 ({exc.reason})") from None
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandFailed(
            f"{where}: event is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(event, dict):
        raise CommandFailed(f"{where}: event must be a JSON object, got {type(event).__name__}")
    return event


@cli.command()
@click.argument("event_json", metavar="EVENT_JSON")
@click.option("--key", default=None, help="Routing key (default: the event's user_id).")
@json_option
@click.pass_context
def evaluate(ctx: click.Context, event_json: str, key: str | None, as_json: bool) -> None:
    """Decide one event (a JSON object, or @file, or @- for stdin) on the version serving its key."""
    event = _read_event(event_json)
    with _managed(ctx) as state:
        decision = RuleEngine(state.open()).evaluate(event, key=key)
    data = decision.as_dict()

    def human() -> None:
        click.echo(f"decision: {decision.decision}")
        click.echo(f"rule:     {decision.rule_id or '(none matched: default decision)'}")
        if decision.reason:
            click.echo(f"reason:   {decision.reason}")
        if decision.params:
            click.echo(f"params:   {json.dumps(data['params'], sort_keys=True)}")
        click.echo(f"version:  {decision.version_id or '(none)'}")
        if decision.error:
            click.echo(f"error:    {decision.error}")

    _emit(as_json, data, human)


# --- controller ---------------------------------------------------------------------------------------


@cli.command()
@click.option("--interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True, metavar="SECONDS")
@click.option("--once", is_flag=True, help="Tick once and exit (for cron).")
@click.option(
    "--auto-rollback/--no-auto-rollback", default=True, show_default=True, help="Roll back unhealthy versions."
)
@json_option
@click.pass_context
def controller(ctx: click.Context, interval: float, once: bool, auto_rollback: bool, as_json: bool) -> None:
    """Run the controller: tick() every INTERVAL (scheduled activations, canary stages, rollbacks) until stopped."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with _managed(ctx) as state:
        manager = state.open(follow=not once, auto_rollback=auto_rollback)
        manager.auto_rollback = auto_rollback
        previous: dict[signal.Signals, Any] = {}
        if not once and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, on_signal)
        try:
            if not as_json:
                click.echo(f"controller on {state.url}, ticking every {interval:g}s (Ctrl-C to stop)")
            last_holding: tuple[str, ...] = ()
            ticks = 0
            while True:
                ticks += 1
                try:
                    report = manager.tick()
                except (RuleEngineError, OSError) as exc:  # a busy or unreachable store: try again next tick
                    if once:
                        raise
                    report = TickReport((), (f"tick failed, retrying: {' '.join(str(exc).split())}",))
                now = iso(time.time())
                if as_json:
                    click.echo(
                        json.dumps({"time": now, "actions": list(report.actions), "holding": list(report.holding)})
                    )
                else:
                    for action in report.actions:
                        click.echo(f"{now}  {action}")
                    if report.holding != last_holding:
                        for why in report.holding:
                            click.echo(f"{now}  holding {why}")
                last_holding = report.holding
                if once or stop.wait(interval):
                    break
            if not as_json:
                click.echo(f"controller stopped after {ticks} tick{'s' if ticks != 1 else ''}")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


# --- demo and schema -----------------------------------------------------------------------------


@cli.command()
@click.option("--fast", is_flag=True, help="Shorter stages (for tests).")
@click.option(
    "--store", "demo_store", default=None, metavar="URL", help="Store to use [default: a temporary SQLite file]."
)
@json_option
def demo(fast: bool, demo_store: str | None, as_json: bool) -> None:
    """Run the whole story on a temporary store: blue-green v1, canary v2, broken v3 rolled back."""
    from rule_engine.demo import run_demo

    summary = run_demo(fast=fast, store_url=demo_store, echo=None if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    if not summary["ok"]:
        raise CommandFailed(f"the demo did not end as expected: {summary['problem']}")


@cli.command()
@json_option
def schema(as_json: bool) -> None:
    """Print the JSON Schema of the bundle format (always JSON; --json is accepted for symmetry)."""
    try:
        from rule_engine.schema import bundle_json_schema  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise CommandFailed("the bundle JSON Schema is not available in this version of rule_engine") from None
    click.echo(json.dumps(bundle_json_schema(), indent=2))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``rule-engine`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="rule-engine")
    raise SystemExit(0)  # pragma: no cover - cli.main always exits
