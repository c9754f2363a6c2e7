"""Prometheus metrics: gauges read from the store at scrape time, and what the daemon records.

Every app has its own CollectorRegistry (never the process-global one), so two apps or two
tests never share counts.
"""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gitopsq.store import Store
from gitopsq.web.queries import queue_stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The daemon's counters: `observe_reconcile`, `provider_error`, `webhook`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._reconcile = Histogram("gitopsq_reconcile_duration_seconds", "Duration of one controller step.",
                                    registry=self.registry,
                                    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self._provider_errors = Counter("gitopsq_provider_errors", "Errors from the compute provider, by kind.",
                                        ["kind"], registry=self.registry)
        self._webhooks = Counter("gitopsq_webhooks", "Webhook requests, by outcome.", ["outcome"], registry=self.registry)
        self._store_collector: Collector | None = None

    def observe_reconcile(self, seconds: float) -> None:
        self._reconcile.observe(seconds)

    def provider_error(self, kind: str) -> None:
        self._provider_errors.labels(kind=kind).inc()

    def webhook(self, outcome: str) -> None:
        """outcome: accepted, unauthorized, too-large or bad-request."""
        self._webhooks.labels(outcome=outcome).inc()

    def collect_from(self, open_store: Callable[[], Store], status: Callable[[], dict] | None = None,
                     clock: Callable[[], float] = time.time) -> None:
        """Compute the state gauges from the store at each scrape (replaces an earlier source)."""
        if self._store_collector is not None:
            self.registry.unregister(self._store_collector)
        self._store_collector = StateCollector(open_store, status, clock)
        self.registry.register(self._store_collector)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    def __init__(self, open_store: Callable[[], Store], status: Callable[[], dict] | None, clock: Callable[[], float]):
        self.open_store = open_store
        self.status = status
        self.clock = clock

    def describe(self):
        return []  # gauges are computed at scrape time: nothing to register up front

    def collect(self):
        stats = queue_stats(self.open_store(), self.clock())
        runs = GaugeMetricFamily("gitopsq_runs", "Runs (as `gitopsq ps` lists them) by their current status.",
                                 labels=["status"])
        for status, count in stats["runs"].items():
            runs.add_metric([status], count)
        yield runs
        yield GaugeMetricFamily("gitopsq_queue_length", "Submissions waiting in the queue.", value=stats["queue_length"])
        yield GaugeMetricFamily("gitopsq_invalid_files", "Files of the branch that do not validate (their runs keep their last valid spec).",
                                value=stats["invalid_files"])
        yield GaugeMetricFamily("gitopsq_queue_oldest_wait_seconds", "How long the oldest queued submission has waited.",
                                value=stats["oldest_wait"])
        if self.status is not None:
            info = self.status()
            yield GaugeMetricFamily("gitopsq_provider_healthy", "1 when the last provider call succeeded, else 0.",
                                    value=0 if info.get("provider_health") else 1)
            yield CounterMetricFamily("gitopsq_step_failures", "Controller steps that failed (since the daemon started).",
                                      value=info.get("step_failures") or 0)
            if info.get("last_step_at") is not None:
                yield GaugeMetricFamily("gitopsq_last_step_success", "1 when the last controller step succeeded, else 0.",
                                        value=0 if info.get("last_step_error") else 1)
            if info.get("last_success_at") is not None:
                yield GaugeMetricFamily("gitopsq_last_step_timestamp_seconds",
                                        "When the controller last finished a step successfully.",
                                        value=info["last_success_at"])
