"""Shell completion (click's): version ids from the store, for arguments that name a version.

Enable it once per shell (docs/cli.md): ``eval "$(_RULE_ENGINE_COMPLETE=bash_source rule-engine)"`` (zsh:
``zsh_source``, fish: ``fish_source``). Completing never fails and never creates a store: a store that
does not exist or cannot be read completes nothing.
"""

from __future__ import annotations

from pathlib import Path

import click
from click.shell_completion import CompletionItem

from rule_engine.deployment.manager import DeploymentManager
from rule_engine.stores.base import store_url_from_env

__all__ = ["complete_versions"]


def complete_versions(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The retained version ids starting with ``incomplete``, each with its state as help."""
    url = store_url_from_env(ctx.find_root().params.get("store_url"))
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :].partition("?")[0]).is_file():
        return []  # completing must not create a store
    try:
        with DeploymentManager.open(url, follow=False) as manager:
            versions = manager.state.versions
            return [CompletionItem(v, help=r.state.value) for v, r in versions.items() if v.startswith(incomplete)]
    except Exception:  # completion must never print a traceback into the shell
        return []
