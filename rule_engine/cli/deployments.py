"""``rule-engine deployments``: the deployments (policies) one store holds, each with what it serves.

A store holds one deployment per policy lineage (docs/deployment.md, "Several policies in one store");
the global ``--deployment NAME`` picks the one a command acts on, and may be left out while the store
holds exactly one.
"""

from __future__ import annotations

from contextlib import closing

import click

from rule_engine.cli._common import json_option, managed
from rule_engine.cli.output import echo, emit
from rule_engine.stores.base import open_store

__all__ = ["deployments"]


@click.command()
@json_option
@click.pass_context
def deployments(ctx: click.Context, as_json: bool) -> None:
    """List the store's deployments: name, active version, rollout in progress, revision."""
    with managed(ctx) as state:
        if state.manager is not None:
            summaries = state.manager.store.deployments()
        else:
            with closing(open_store(state.url, create=False)) as opened:
                summaries = opened.deployments()
        data = {
            "store": state.shown_url,
            "selected": state.deployment,
            "deployments": [s.to_dict() for s in summaries],
        }

        def human() -> None:
            if not summaries:
                echo(f"{state.shown_url}: no deployment yet ('rule-engine deploy BUNDLE' creates one)")
                return
            width = max(len(s.name) for s in summaries)
            for s in summaries:
                mark = "*" if s.name == state.deployment else " "
                rollout = f"{s.rollout} of {s.candidate_version_id}" if s.rollout else "no rollout"
                paused = " (paused)" if s.paused else ""
                active = s.active_version_id or "nothing active"
                echo(f"{mark} {s.name:<{width}}  {active}  {rollout}{paused}  revision {s.revision}")

        emit(as_json, data, human)
