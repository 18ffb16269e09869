"""The ``rule-engine`` command line: validate, deploy, watch and roll back rule bundles.

Every command prints for people by default and one JSON object with ``--json``. On success the exit
status is 0; on any failure it is 1 (2 for a usage error) and stderr holds exactly one line starting
with ``error:``, never a traceback (set ``RULE_ENGINE_DEBUG=1`` to see one for unexpected errors).
The state store is ``--store URL``, else ``$RULE_ENGINE_STORE``, else ``sqlite:///.rule-engine/state.db``;
a store holds one deployment per policy: ``--deployment NAME`` (else ``$RULE_ENGINE_DEPLOYMENT``) picks
the one to act on, optional while the store holds one (``rule-engine deployments`` lists them).
With ``--trust FILE`` (else ``$RULE_ENGINE_TRUST``) ``deploy`` and ``validate`` refuse bundles without a
trusted signature (``BUNDLE.sig``); ``keygen`` and ``sign`` make keys and signatures (docs/cli.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from rule_engine.cli._common import CliContext as CliContext
from rule_engine.cli._common import CommandFailed as CommandFailed
from rule_engine.cli._common import cli
from rule_engine.cli.analysis import check, lint, preview, replay
from rule_engine.cli.bundles import diff, evaluate, schema, validate
from rule_engine.cli.deploy import advance, conclude, deploy, promote, rollback
from rule_engine.cli.deployments import deployments
from rule_engine.cli.fleet import fleet, mirror
from rule_engine.cli.lifecycle import abort, activate, cancel, pause, resume, retry, undo
from rule_engine.cli.run import controller, demo
from rule_engine.cli.serve import serve, token, watch
from rule_engine.cli.signing import keygen, sign, trust
from rule_engine.cli.status import experiment, history, status
from rule_engine.cli.store import audit, store
from rule_engine.cli.targeting import pin, unpin

__all__ = ["cli", "main"]

for _command in (
    validate,
    deploy,
    keygen,
    sign,
    status,
    advance,
    promote,
    rollback,
    conclude,
    pause,
    resume,
    abort,
    retry,
    undo,
    activate,
    cancel,
    experiment,
    history,
    diff,
    evaluate,
    controller,
    demo,
    schema,
    serve,
    token,
    watch,
    pin,
    unpin,
):
    cli.add_command(_command)
cli.add_command(replay)
cli.add_command(check)
cli.add_command(lint)
cli.add_command(preview)
cli.add_command(fleet)
cli.add_command(mirror)
cli.add_command(store)
cli.add_command(audit)
cli.add_command(trust)
cli.add_command(deployments)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``rule-engine`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="rule-engine")
    raise SystemExit(0)  # pragma: no cover - cli.main always exits
