"""Per-deployment analysis settings (D6): chosen at deploy time, stored with the version, used everywhere."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from rule_engine import Canary, DeploymentManager, HealthThresholds, RuleEngine
from rule_engine.control.records import VersionRecord
from tests._support_health import START, THRESHOLDS, bundle, drive, manager_with_stable

LENIENT = HealthThresholds(max_error_rate=0.10, min_evaluations=50, window_secs=120, bake_secs=30)


def test_analysis_is_stored_with_the_version_and_judges_it_in_every_process(tmp_path: Path) -> None:
    """A second controller process with the default 1% limit judges the canary by its stored 10% limit."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with freeze_time(START):
        deployer = DeploymentManager.open(url, follow=False, thresholds=THRESHOLDS)
        stable = deployer.prepare_deployment(bundle("1.0.0"))
        deployer.activate_deployment(stable)
        candidate = deployer.prepare_deployment(bundle("2.0.0"), Canary((10, 100), 60), analysis=LENIENT)
        deployer.activate_deployment(candidate)
        controller = DeploymentManager.open(url, follow=False, auto_rollback=True)  # default thresholds
        assert controller.state.versions[candidate].analysis == LENIENT.to_dict()
        assert controller.state.versions[stable].analysis is None
        assert controller.update_health_metrics(candidate, 100, 6) is True  # 6% < 10%, 100 >= 50
        verdict = controller.health_verdict(candidate)
        assert "in the last 120s" in verdict.reason
        assert controller.health_verdict(stable).healthy is None  # the manager's own: 200 needed
        deployer.close()
        controller.close()


def test_a_version_s_own_bake_time_decides_whether_it_is_rolled_back() -> None:
    """bake_secs=30 in the analysis: a version failing 31 s after it went live is reported, not rolled back."""
    with freeze_time(START) as clock:
        manager, stable = manager_with_stable()
        new = manager.prepare_deployment(bundle("2.0.0"), analysis=replace(THRESHOLDS, bake_secs=30))
        manager.activate_deployment(new)
        clock.tick(31)
        assert manager.update_health_metrics(new, 1000, 500) is False
        assert manager.get_active_version_id() == new
        other = manager.prepare_deployment(bundle("3.0.0"))  # the manager's bake time: 300 s
        manager.activate_deployment(other)
        clock.tick(31)
        assert manager.update_health_metrics(other, 1000, 900) is False  # far worse than its predecessor
        assert manager.get_active_version_id() == new  # rolled back: in the manager's bake time
        assert stable in manager.state.versions


def test_a_longer_window_in_the_analysis_is_kept_by_pruning() -> None:
    """A version judged over an hour keeps its buckets though the manager's own window is 5 minutes."""
    with freeze_time(START) as clock:
        manager, _stable = manager_with_stable(auto_rollback=False)
        hour = replace(THRESHOLDS, window_secs=3600, bake_secs=0)
        candidate = manager.prepare_deployment(bundle("2.0.0"), Canary((50, 100), 7200), analysis=hour)
        manager.activate_deployment(candidate)
        engine = RuleEngine(manager)
        drive(engine, 1000)
        manager.tick()
        clock.tick(1800)
        manager.tick()  # prunes: two of the manager's windows ago is long after the traffic
        info = manager.get_deployment_info(candidate)
        assert info is not None
        assert info.health_metrics.window.evaluations > 300
        assert "in the last 3600s" in info.health_metrics.verdict_reason


@pytest.mark.parametrize(
    "analysis",
    [{"max_error_rate": 0.1}, "lenient", 0.1],
    ids=["dict", "str", "float"],
)
def test_analysis_must_be_health_thresholds_and_nothing_is_staged_otherwise(analysis: object) -> None:
    """A wrong analysis is refused before anything is stored."""
    manager, _ = manager_with_stable()
    before = manager.state.revision
    with pytest.raises(TypeError, match="analysis must be HealthThresholds"):
        manager.prepare_deployment(bundle("2.0.0"), analysis=analysis)  # type: ignore[arg-type]
    assert manager.state.revision == before


@pytest.mark.parametrize(
    "changes",
    [
        {"max_error_rate": float("nan")},
        {"window_secs": float("inf")},
        {"bake_secs": -1.0},
        {"bake_secs": 8 * 86_400.0},
        {"min_evaluations": True},
        {"min_evaluations": 10**13},
        {"max_latency_us": float("inf")},
    ],
    ids=["nan-rate", "inf-window", "negative-bake", "bake-over-a-week", "bool-min", "huge-min", "inf-latency"],
)
def test_thresholds_out_of_bounds_are_refused(changes: dict[str, Any]) -> None:
    """Every analysis setting is a bounded, finite value (a week at most for times)."""
    with pytest.raises(ValueError, match=r"must|need"):
        replace(THRESHOLDS, **changes)


def test_records_without_analysis_read_and_write_as_before() -> None:
    """The analysis field is optional in the stored JSON: absent when None, tolerated when missing."""
    with freeze_time(START):
        manager, stable = manager_with_stable()
        record = manager.state.versions[stable]
    data = record.to_dict()
    assert "analysis" not in data
    assert VersionRecord.from_dict(data) == record
    with_analysis = replace(record, analysis=LENIENT.to_dict())
    assert VersionRecord.from_dict(with_analysis.to_dict()) == with_analysis
    assert HealthThresholds.from_dict(LENIENT.to_dict()) == LENIENT
    with pytest.raises(ValueError, match="unknown analysis setting"):
        HealthThresholds.from_dict({"max_error_rte": 0.1})
