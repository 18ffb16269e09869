"""Write ``tests/cases/store_schema2.db`` (and its ``.json`` expectations) with an OLD rule_engine.

The file is a store as rule_engine wrote it before a store held several deployments (SQLite schema 2,
commit 431161c): gateway-v1 deployed blue-green, gateway-v2 in a canary at its second stage, some
health counted, and the audit trail of it all. ``tests/test_deployments_migration.py`` opens it with
today's code and checks it migrated in place: same versions, audit chain verifying, same serving.

Regenerate (only if the fixture must change; it stands for what old releases wrote)::

    rm -rf /tmp/re-431161c && mkdir /tmp/re-431161c && git archive 431161c rule_engine | tar -x -C /tmp/re-431161c
    PYTHONPATH=/tmp/re-431161c .venv/bin/python tests/make_legacy_store.py tests/cases/store_schema2.db

(``PYTHONPATH`` comes before the editable install of today's code; the script refuses to run on a
rule_engine that already knows deployments.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SAMPLE_KEYS = [f"user-{i}" for i in range(200)]


def main(target: Path) -> None:
    """Write the store at ``target`` and what a reader must find in it at ``target.with_suffix('.json')``."""
    from freezegun import freeze_time

    import rule_engine.stores.base as base
    from rule_engine import Canary, DeploymentManager, RuleEngine

    if hasattr(base, "open_deployment"):
        raise SystemExit("this rule_engine already holds several deployments: run the script on commit 431161c")
    bundles = Path(base.__file__).parent.parent / "bundles"
    target.unlink(missing_ok=True)
    url = f"sqlite:///{target.resolve()}"
    with freeze_time("2026-01-01 00:00:00") as clock:
        manager = DeploymentManager.open(url, follow=False)
        v1 = manager.prepare_deployment(bundles / "gateway-v1.json", deployed_by="alice")
        manager.activate_deployment(v1, actor="alice")
        clock.tick(60)
        v2 = manager.prepare_deployment(bundles / "gateway-v2.json", Canary((10, 50, 100), 60), deployed_by="bob")
        manager.activate_deployment(v2, actor="bob")
        engine = RuleEngine(manager)
        event = {"agent_id": "api_gateway", "flow_id": "login", "geo": {"country": "FR"}, "user": {"id": "u"}}
        for key in SAMPLE_KEYS:
            engine.evaluate(event, key=key)
        manager.update_health_metrics(v2, 50, 0)
        clock.tick(61)
        manager.advance_rollout(actor="bob", reason="looks fine")
        served = {key: manager.route(key).version_id for key in SAMPLE_KEYS}  # type: ignore[union-attr]
        state = manager.store.load()
        check = manager.store.verify_audit()
        expected = {
            "written_by": "rule_engine at commit 431161c (SQLite schema 2)",
            "deployment": "gateway-access",
            "revision": state.revision,
            "active": state.active,
            "versions": list(state.versions),
            "rollout": {"candidate": v2, "stage_index": state.rollout.stage_index, "share_bp": state.rollout.share_bp}
            if state.rollout
            else None,
            "audit": [[e.seq, e.action, e.version_id, e.actor] for e in manager.store.audit_log()],
            "audit_head": check.head,
            "audit_checked": check.checked,
            "served": served,
            "evaluations": manager.store.health([v1, v2])[v2].evaluations,
        }
        manager.close()
    target.with_suffix(".json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
