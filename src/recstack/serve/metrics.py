"""Prometheus metrics of one app: request counts and latencies by route, fallbacks, events, and
which model versions are served. Each app has its own registry, so two apps in one process (tests,
a reload) never share or clash over counters. A server with several worker processes sets
`PROMETHEUS_MULTIPROC_DIR` (prometheus_client's multiprocess mode): each worker writes its values
there and /metrics, whichever worker answers, sums the counters and lists every worker's gauges."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "MULTIPROCESS_DIR", "ServeMetrics"]

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR))
        self._described: list[tuple[str, ...]] = []
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
                                "version (content hash)", ["run", "label", "name", "version"], registry=self.registry,
                                multiprocess_mode="liveall")
        self.load_seconds = Gauge("recstack_run_load_seconds", "Seconds the served run took to load",
                                  registry=self.registry, multiprocess_mode="liveall")

    def serving(self, served) -> None:
        """Describe the run now served: the previous run's models leave the gauge (in multiprocess
        mode a written series cannot be removed, so they read 0)."""
        for old in self._described:
            if self.multiprocess:
                self.model_info.labels(*old).set(0)
            else:
                self.model_info.remove(*old)
        self._described = [(served.name, label, served.model_names[label], version)
                           for label, version in served.versions.items()]
        for described in self._described:
            self.model_info.labels(*described).set(1)
        self.load_seconds.set(served.load_seconds)

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
