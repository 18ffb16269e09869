"""Reported health figures are bounded (D8): every field has a documented limit, tested at the limit."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from rule_engine.health.ledger import MAX_REPORTED_EVALUATIONS, MAX_REPORTED_LATENCY_US
from tests._support_health import manager_with_stable


def test_the_limits_are_the_documented_ones() -> None:
    """10**12 evaluations per report, one hour of average latency."""
    assert MAX_REPORTED_EVALUATIONS == 10**12
    assert MAX_REPORTED_LATENCY_US == 3_600_000_000.0


def test_figures_at_the_limits_are_accepted_and_status_json_stays_valid() -> None:
    """A report exactly at every limit is added; the status JSON has no Infinity or NaN."""
    manager, stable = manager_with_stable(auto_rollback=False)
    n = MAX_REPORTED_EVALUATIONS
    manager.update_health_metrics(stable, n, n, n, MAX_REPORTED_LATENCY_US)
    info = manager.get_deployment_info(stable)
    assert info is not None
    metrics = info.health_metrics
    assert (metrics.total_evaluations, metrics.error_count, metrics.timeout_count) == (n, n, n)
    assert metrics.avg_latency_us == pytest.approx(MAX_REPORTED_LATENCY_US)
    text = json.dumps(metrics.to_dict(), allow_nan=False)  # raises on inf / nan
    assert json.loads(text)["total_evaluations"] == n


@pytest.mark.parametrize(
    ("figures", "field", "limit"),
    [
        ({"evaluations": MAX_REPORTED_EVALUATIONS + 1}, "evaluations", "1,000,000,000,000"),
        ({"evaluations": 10**30}, "evaluations", "1,000,000,000,000"),
        ({"evaluations": 10**400}, "evaluations", "1,000,000,000,000"),
        ({"evaluations": 10**5000}, "evaluations", "1,000,000,000,000"),
        ({"evaluations": True}, "evaluations", "1,000,000,000,000"),
        ({"evaluations": 10, "errors": True}, "errors", "1,000,000,000,000"),
        ({"evaluations": 10, "timeouts": 10**13}, "timeouts", "1,000,000,000,000"),
        ({"evaluations": 10, "avg_latency_us": MAX_REPORTED_LATENCY_US + 1}, "avg_latency_us", "3,600,000,000"),
        ({"evaluations": 10, "avg_latency_us": 1e308}, "avg_latency_us", "3,600,000,000"),
        ({"evaluations": 10, "avg_latency_us": math.inf}, "avg_latency_us", "3,600,000,000"),
        ({"evaluations": 10, "avg_latency_us": True}, "avg_latency_us", "3,600,000,000"),
        ({"evaluations": 10, "avg_latency_us": "12"}, "avg_latency_us", "3,600,000,000"),
        ({"evaluations": 10, "avg_latency_us": 10**400}, "avg_latency_us", "3,600,000,000"),
    ],
    ids=[
        "evaluations-over",
        "evaluations-1e30",
        "evaluations-1e400",
        "evaluations-1e5000",
        "evaluations-bool",
        "errors-bool",
        "timeouts-over",
        "latency-over",
        "latency-1e308",
        "latency-inf",
        "latency-bool",
        "latency-str",
        "latency-huge-int",
    ],
)
def test_figures_past_a_limit_are_refused_naming_field_and_limit(
    figures: dict[str, Any], field: str, limit: str
) -> None:
    """ValueError naming the field and its limit (never OverflowError or TypeError); nothing is added."""
    manager, stable = manager_with_stable(auto_rollback=False)
    with pytest.raises(ValueError, match=rf"^{field} must be .*{limit}") as caught:
        manager.update_health_metrics(stable, **figures)
    assert len(str(caught.value)) < 200
    info = manager.get_deployment_info(stable)
    assert info is not None
    assert info.health_metrics.total_evaluations == 0
