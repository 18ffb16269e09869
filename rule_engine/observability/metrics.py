"""Prometheus metrics of a deployment, read at scrape time (nothing is added to the hot path).

:func:`register` adds a collector to a ``prometheus_client`` registry. On each scrape it reads:

- the serving snapshot's recorders (this process's lock-free counters, as ``RuleEngine.evaluate``
  left them): evaluations, errors, timeouts, decisions and the latency histogram per version and
  role (``stable`` or ``candidate``);
- the rollout in progress: candidate weight, stage, state;
- the versions in history by state; the store revision and whether the follower is stale;
- the fleet registered on the store: instances by status (``serving`` what the state says, ``behind``
  at an older revision with the same versions, ``lagging``) and whether it converged (one store query);
- rollbacks by cause (``automatic`` or ``manual``), counted by an ``on_rollback`` hook;
- webhook deliveries by outcome, when a :class:`DeliverySource` is given;
- a shadow's evaluations, errors, drops and disagreements, and the decision log's sampled and
  dropped counts, when they are attached (``rule_engine.serving.decisionlog.Taps``).

Names follow the Prometheus conventions: ``rule_engine_`` prefix, snake_case, ``_total`` on counters,
base units (seconds, ratios 0..1). Cost per scrape: one pass over each recorder's per-thread shards,
one rollout status and one info per version kept (``max_history``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from rule_engine.control.states import DeploymentState
from rule_engine.deployment.hooks import DeploymentEvent, HookPoint
from rule_engine.errors import RuleEngineError
from rule_engine.serving.shadow import ShadowEvaluator

if TYPE_CHECKING:
    from rule_engine.deployment.manager import DeploymentManager
    from rule_engine.serving.recorder import VersionRecorder
    from rule_engine.serving.snapshot import ServingCell

__all__ = ["LATENCY_BUCKET_BITS", "DeliverySource", "ManagerCollector", "register"]

# Histogram bucket i of a recorder holds latencies below 2**i ns; these bounds are exposed (1 us .. 1 s).
LATENCY_BUCKET_BITS = tuple(range(10, 31, 2))


class DeliverySource(Protocol):
    """Anything that reports webhook deliveries (see :class:`rule_engine.observability.webhooks.Notifier`)."""

    def delivery_counts(self) -> Mapping[tuple[str, str], int]:
        """Deliveries so far by (webhook name, outcome)."""
        ...

    def queue_depth(self) -> int:
        """Deliveries waiting in the queue."""
        ...

    def deliveries(self) -> list[dict[str, Any]]:
        """Recent deliveries, newest last (for status pages)."""
        ...


class ManagerCollector(Collector):
    """A custom collector reading one manager when scraped."""

    def __init__(self, manager: DeploymentManager, deployment: str, notifier: DeliverySource | None = None) -> None:
        self.manager = manager
        self.deployment = deployment
        self.notifier = notifier
        self._lock = threading.Lock()
        self._rollbacks: dict[str, int] = {"automatic": 0, "manual": 0}
        self.unsubscribe = manager.subscribe(HookPoint.ON_ROLLBACK, self._on_rollback)

    def _on_rollback(self, event: DeploymentEvent) -> None:
        with self._lock:
            cause = "automatic" if event.automatic else "manual"
            self._rollbacks[cause] += 1

    def describe(self) -> Iterator[Metric]:
        """Nothing up front (the registry would otherwise call :meth:`collect` at registration)."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """Every metric of this deployment, read now."""
        yield from self._evaluations()
        yield from self._rollout()
        yield from self._control()
        yield from self._fleet()
        if self.notifier is not None:
            yield from self._webhooks(self.notifier)
        yield from _taps_metrics(self.deployment, self.manager.serving_cell)  # shadow, decision log

    def _evaluations(self) -> Iterator[Metric]:
        labels = ["deployment", "version", "role"]
        evaluations = CounterMetricFamily("rule_engine_evaluations", "Evaluations by this process.", labels=labels)
        errors = CounterMetricFamily("rule_engine_evaluation_errors", "Evaluations that raised.", labels=labels)
        timeouts = CounterMetricFamily(
            "rule_engine_evaluation_timeouts", "Evaluations slower than the deadline.", labels=labels
        )
        decisions = CounterMetricFamily(
            "rule_engine_decisions", "Decisions given, by decision.", labels=[*labels, "decision"]
        )
        latency = HistogramMetricFamily("rule_engine_evaluation_duration_seconds", "Evaluation latency.", labels=labels)
        snapshot = self.manager.snapshot
        seen: list[tuple[str, VersionRecorder | None]] = [
            ("stable", snapshot.stable_recorder),
            ("candidate", snapshot.candidate_recorder if snapshot.candidate is not None else None),
        ]
        for role, recorder in seen:
            if recorder is None:
                continue
            totals = recorder.totals()
            values = [self.deployment, recorder.version_id, role]
            evaluations.add_metric(values, totals.evaluations)
            errors.add_metric(values, totals.errors)
            timeouts.add_metric(values, totals.timeouts)
            for decision, count in sorted(totals.decisions.items()):
                decisions.add_metric([*values, decision], count)
            histogram = list(totals.histogram)
            buckets: list[tuple[str, float]] = []
            for bits in LATENCY_BUCKET_BITS:
                buckets.append((_le(bits), float(sum(histogram[: bits + 1]))))
            buckets.append(("+Inf", float(sum(histogram))))
            latency.add_metric(values, buckets, totals.latency_sum_us / 1e6)
        yield from (evaluations, errors, timeouts, decisions, latency)

    def _rollout(self) -> Iterator[Metric]:
        labels = ["deployment", "version", "strategy"]
        weight = GaugeMetricFamily(
            "rule_engine_rollout_weight_ratio", "Share of traffic the candidate takes (0..1).", labels=labels
        )
        stage = GaugeMetricFamily("rule_engine_rollout_stage", "Current canary stage (1-based).", labels=labels)
        holding = GaugeMetricFamily(
            "rule_engine_rollout_holding", "1 while the rollout holds (waiting or unhealthy).", labels=labels
        )
        in_progress = GaugeMetricFamily(
            "rule_engine_rollout_in_progress", "1 while a rollout or A/B test is in progress.", labels=["deployment"]
        )
        rollout = self.manager.get_rollout_status()
        in_progress.add_metric([self.deployment], 1 if rollout else 0)
        if rollout is not None:
            values = [self.deployment, rollout.version_id, rollout.strategy]
            weight.add_metric(values, rollout.percentage / 100)
            stage.add_metric(values, rollout.stage)
            holding.add_metric(values, 1 if rollout.holding else 0)
        yield from (weight, stage, holding, in_progress)

    def _control(self) -> Iterator[Metric]:
        versions = GaugeMetricFamily(
            "rule_engine_versions", "Versions kept in history, by state.", labels=["deployment", "state"]
        )
        counts = dict.fromkeys((s.value for s in DeploymentState), 0)
        for version_id in self.manager.get_deployment_history():
            info = self.manager.get_deployment_info(version_id)
            if info is not None:
                counts[info.state.value] += 1
        for state, count in counts.items():
            versions.add_metric([self.deployment, state], count)
        active = GaugeMetricFamily(
            "rule_engine_active_version_info",
            "The version serving all traffic outside a rollout.",
            labels=["deployment", "version"],
        )
        current = self.manager.get_active_version_id()
        if current is not None:
            active.add_metric([self.deployment, current], 1)
        revision = GaugeMetricFamily(
            "rule_engine_store_revision", "Store revision this process serves.", labels=["deployment"]
        )
        revision.add_metric([self.deployment], self.manager.snapshot.revision)
        stale = GaugeMetricFamily(
            "rule_engine_follower_stale",
            "1 while the store is unreachable and the state may be old.",
            labels=["deployment"],
        )
        stale.add_metric([self.deployment], 1 if self.manager.stale else 0)
        rollbacks = CounterMetricFamily(
            "rule_engine_rollbacks", "Rollbacks seen by this process, by cause.", labels=["deployment", "cause"]
        )
        with self._lock:
            for cause, count in self._rollbacks.items():
                rollbacks.add_metric([self.deployment, cause], count)
        yield from (versions, active, revision, stale, rollbacks)

    def _fleet(self) -> Iterator[Metric]:
        try:
            view = self.manager.fleet.view()
        except RuleEngineError:
            return  # the store is unreachable: rule_engine_follower_stale says so
        instances = GaugeMetricFamily(
            "rule_engine_fleet_instances",
            "Instances registered on the store, by status against the stored state.",
            labels=["deployment", "status"],
        )
        lagging = len(view.lagging)
        for status, count in (
            ("serving", len(view.instances) - lagging - view.behind),
            ("behind", view.behind),
            ("lagging", lagging),
        ):
            instances.add_metric([self.deployment, status], count)
        converged = GaugeMetricFamily(
            "rule_engine_fleet_converged",
            "1 when every registered instance serves what the stored state says.",
            labels=["deployment"],
        )
        converged.add_metric([self.deployment], 1 if view.converged else 0)
        yield from (instances, converged)

    def _webhooks(self, notifier: DeliverySource) -> Iterator[Metric]:
        deliveries = CounterMetricFamily(
            "rule_engine_webhook_deliveries",
            "Webhook delivery attempts by outcome.",
            labels=["deployment", "webhook", "outcome"],
        )
        for (webhook, outcome), count in sorted(notifier.delivery_counts().items()):
            deliveries.add_metric([self.deployment, webhook, outcome], count)
        depth = GaugeMetricFamily(
            "rule_engine_webhook_queue_depth", "Webhook deliveries waiting.", labels=["deployment"]
        )
        depth.add_metric([self.deployment], notifier.queue_depth())
        yield from (deliveries, depth)


def _taps_metrics(deployment: str, cell: ServingCell) -> Iterator[Metric]:
    """The shadow's and the decision log's counters as Prometheus metrics."""
    taps = cell.taps
    shadow = taps.shadow if taps is not None else None
    if isinstance(shadow, ShadowEvaluator):
        report = shadow.report()
        labels = ["deployment", "version"]
        values = [deployment, report.version_id or ""]
        families = []
        for name, text, value in (
            ("evaluations", "Events the shadow candidate decided.", report.evaluations),
            ("errors", "Shadow evaluations that raised.", report.errors),
            ("dropped", "Sampled events dropped because the shadow queue was full.", report.dropped),
        ):
            family = CounterMetricFamily(f"rule_engine_shadow_{name}", text, labels=labels)
            family.add_metric(values, value)
            families.append(family)
        disagreements = CounterMetricFamily(
            "rule_engine_shadow_disagreements",
            "Shadow decisions that differ from the served one, by agent, flow and decision change.",
            labels=[*labels, "agent", "flow", "from", "to"],
        )
        for (agent, flow, before, after), count in sorted(report.groups.items()):
            disagreements.add_metric([*values, agent, flow, before, after], count)
        ratio = GaugeMetricFamily(
            "rule_engine_shadow_disagreement_ratio", "Disagreements per compared event (0..1).", labels=labels
        )
        ratio.add_metric(values, report.disagreement_rate)
        yield from (*families, disagreements, ratio)
    log = taps.log if taps is not None else None
    if log is not None:
        sampled = CounterMetricFamily(
            "rule_engine_decision_log_sampled", "Decisions selected for the decision log.", labels=["deployment"]
        )
        sampled.add_metric([deployment], log.sampled)
        dropped = CounterMetricFamily(
            "rule_engine_decision_log_dropped", "Selected decisions dropped: the queue was full.", labels=["deployment"]
        )
        dropped.add_metric([deployment], log.dropped)
        yield from (sampled, dropped)


def _le(bits: int) -> str:
    return repr((1 << bits) / 1e9)


def register(
    manager: DeploymentManager,
    registry: CollectorRegistry,
    *,
    deployment: str = "default",
    notifier: DeliverySource | None = None,
) -> ManagerCollector:
    """Expose ``manager``'s metrics in ``registry`` (for applications that serve their own ``/metrics``).

    Returns the collector; ``registry.unregister(collector)`` and ``collector.unsubscribe()`` undo it.
    """
    collector = ManagerCollector(manager, deployment, notifier)
    registry.register(collector)
    return collector
