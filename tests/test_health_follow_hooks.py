"""Swap hooks fire in every process whose serving snapshot changes (D29), followers included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from freezegun import freeze_time

from rule_engine import Canary, DeploymentEvent, DeploymentManager
from tests._support_health import START, THRESHOLDS, bundle


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[DeploymentManager, DeploymentManager]]:
    """A deployer (the CLI, say) and an evaluator following the same SQLite store."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    deployer = DeploymentManager.open(url, follow=False, thresholds=THRESHOLDS, auto_rollback=True)
    evaluator = DeploymentManager.open(url, follow=False, thresholds=THRESHOLDS)
    yield deployer, evaluator
    deployer.close()
    evaluator.close()


def _listen(manager: DeploymentManager) -> tuple[list[DeploymentEvent], list[DeploymentEvent], list[bool]]:
    swaps: list[DeploymentEvent] = []
    rollbacks: list[DeploymentEvent] = []
    locked: list[bool] = []

    def after_swap(event: DeploymentEvent) -> None:
        locked.append(manager._lock._is_owned())  # type: ignore[attr-defined]
        swaps.append(event)

    manager.subscribe("after_swap", after_swap)
    manager.subscribe("on_rollback", rollbacks.append)
    return swaps, rollbacks, locked


def test_a_follower_runs_after_swap_when_another_process_deploys(
    pair: tuple[DeploymentManager, DeploymentManager],
) -> None:
    """Deploy, canary, rollback in one process: the follower's hooks hear each, outside its lock."""
    deployer, evaluator = pair
    swaps, rollbacks, locked = _listen(evaluator)
    with freeze_time(START):
        v1 = deployer.prepare_deployment(bundle("1.0.0"))
        assert evaluator.refresh() is True
        assert swaps == []  # staged only: nothing served changed
        deployer.activate_deployment(v1)
        assert evaluator.refresh() is True
        v2 = deployer.prepare_deployment(bundle("2.0.0"), Canary((10, 100), 60))
        deployer.activate_deployment(v2)
        assert evaluator.refresh() is True
        deployer.rollback(actor="ops", reason="not today")
        assert evaluator.refresh() is True
        assert evaluator.refresh() is False
    assert [(e.action, e.version_id, e.actor) for e in swaps] == [
        ("follow", v1, "follower"),
        ("follow", v2, "follower"),
        ("follow", v2, "follower"),
    ]
    assert [e.serving_after for e in swaps] == [(v1, None, 0.0), (v1, v2, 10.0), (v1, None, 0.0)]
    assert [e.serving_before for e in swaps] == [(None, None, 0.0), (v1, None, 0.0), (v1, v2, 10.0)]
    assert locked == [False, False, False]
    assert [(e.action, e.version_id, e.reason, e.automatic) for e in rollbacks] == [("follow", v2, "not today", False)]


def test_a_follower_hears_an_automatic_rollback_as_automatic(
    pair: tuple[DeploymentManager, DeploymentManager],
) -> None:
    """An automatic rollback committed by another process reaches the follower's on_rollback, marked automatic."""
    deployer, evaluator = pair
    with freeze_time(START):
        v1 = deployer.prepare_deployment(bundle("1.0.0"))
        deployer.activate_deployment(v1)
        v2 = deployer.prepare_deployment(bundle("2.0.0"), Canary((10, 100), 60))
        deployer.activate_deployment(v2)
        evaluator.refresh()
        swaps, rollbacks, _ = _listen(evaluator)
        assert deployer.update_health_metrics(v2, 1000, 500) is False
        assert evaluator.refresh() is True
    assert [e.serving_after for e in swaps] == [(v1, None, 0.0)]
    assert len(rollbacks) == 1
    assert rollbacks[0].version_id == v2
    assert rollbacks[0].automatic is True
    assert rollbacks[0].reason.startswith("error rate 50.0%")


def test_the_committing_process_runs_its_hooks_once(pair: tuple[DeploymentManager, DeploymentManager]) -> None:
    """The process that made the change runs after_swap itself; refreshing afterwards does not run it again."""
    deployer, _ = pair
    swaps, _, _ = _listen(deployer)
    with freeze_time(START):
        v1 = deployer.prepare_deployment(bundle("1.0.0"))
        deployer.activate_deployment(v1)
        assert deployer.refresh() is False
    assert [e.action for e in swaps] == ["activate"]
