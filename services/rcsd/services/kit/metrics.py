"""Prometheus metrics, one registry per app so several apps can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"service": service}
        self.requests = Counter(
            "rcsd_requests", "HTTP requests answered", ["route", "status"], registry=self.registry
        ).labels  # called with route/status at the end of each request
        self.latency = Histogram(
            "rcsd_request_seconds",
            "HTTP request latency",
            ["route"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        ).labels
        self.in_flight = Gauge("rcsd_in_flight", "requests being worked on", registry=self.registry)
        self.queue_depth = Gauge("rcsd_queue_depth", "requests waiting for a slot", registry=self.registry)
        self.rejected = Counter("rcsd_rejected", "requests refused by admission", registry=self.registry)
        self.tokens_in_flight = Gauge(
            "rcsd_tokens_in_flight",
            "tokens (context + completion) of the requests being worked on",
            registry=self.registry,
        )
        self.cancelled = Counter(
            "rcsd_cancelled",
            "requests whose client went away first; their work was stopped",
            registry=self.registry,
        )
        self.tokens_scored = Counter(
            "rcsd_tokens_scored", "completion tokens scored by the teacher", registry=self.registry
        )
        self.rubrics = Counter(
            "rcsd_rubrics", "rubrics answered, by source", ["source"], registry=self.registry
        ).labels
        self.info = Gauge("rcsd_service_info", "constant 1, labelled", ["service"], registry=self.registry)
        self.info.labels(**labels).set(1)
