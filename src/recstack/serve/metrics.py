"""Prometheus metrics of one app: request counts and latencies by route, fallbacks, events, and
which model versions are served. Each app has its own registry, so two apps in one process (tests,
a reload) never share or clash over counters."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("recstack_requests_total", "HTTP requests by route, method and status code",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("recstack_request_seconds", "HTTP request latency by route", ["route", "method"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.fallbacks = Counter("recstack_fallback_total", "Recommendations answered by the fallback model",
                                 ["model"], registry=self.registry)
        self.events = Counter("recstack_events_total", "Posted events by outcome (accepted, duplicate)",
                              ["outcome"], registry=self.registry)
        self.model_info = Gauge("recstack_model_info", "Served models (value 1): run, label, registered name, "
                                "version (content hash)", ["run", "label", "name", "version"], registry=self.registry)
        self.load_seconds = Gauge("recstack_run_load_seconds", "Seconds the served run took to load",
                                  registry=self.registry)

    def serving(self, served) -> None:
        """Describe the run now served (the previous run's models disappear from the gauge)."""
        self.model_info.clear()
        for label, version in served.versions.items():
            self.model_info.labels(served.name, label, served.model_names[label], version).set(1)
        self.load_seconds.set(served.load_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
