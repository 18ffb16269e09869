"""Shell completion (click's): version ids and deployment names from the store.

Enable it once per shell (docs/cli.md): ``eval "$(_RULE_ENGINE_COMPLETE=bash_source rule-engine)"`` (zsh:
``zsh_source``, fish: ``fish_source``). Completing never fails and never creates a store: a store that
does not exist or cannot be read completes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from rule_engine.deployment.manager import DeploymentManager
from rule_engine.stores.base import open_store, store_url_from_env

__all__ = ["complete_deployments", "complete_versions"]


def _url(ctx: click.Context) -> str | None:
    """The store URL given earlier on the line (or its default), None when it names no existing file."""
    url = store_url_from_env(ctx.find_root().params.get("store_url"))
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :].partition("?")[0]).is_file():
        return None  # completing must not create a store
    return url


def complete_deployments(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The store's deployment names starting with ``incomplete``, each with its active version as help."""
    url = _url(ctx)
    try:
        if url is None:
            return []
        store = open_store(url)
        try:
            return [
                CompletionItem(d.name, help=d.active_version_id or "nothing active")
                for d in store.deployments()
                if d.name.startswith(incomplete)
            ]
        finally:
            store.close()
    except Exception:  # completion must never print a traceback into the shell
        return []


def complete_versions(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The retained version ids (of the ``--deployment`` given, else the only one) starting with ``incomplete``."""
    url = _url(ctx)
    if url is None:
        return []
    try:
        deployment = ctx.find_root().params.get("deployment") or os.environ.get("RULE_ENGINE_DEPLOYMENT") or None
        with DeploymentManager.open(url, deployment=deployment, follow=False, create=False) as manager:
            versions = manager.state.versions
            return [CompletionItem(v, help=r.state.value) for v, r in versions.items() if v.startswith(incomplete)]
    except Exception:  # completion must never print a traceback into the shell
        return []
