"""Prometheus metrics: the service's own in one registry per app (several apps can live in one process),
exported together with the process-wide registry, where vLLM puts its `vllm:*` metrics and
prometheus_client its `process_*` and `python_*` ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import (
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from rcsd.client import __version__


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
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
        # per caller: `key_name` is the API key's name (kit/api_keys.py), never the key
        self.key_requests = Counter(
            "rcsd_key_requests",
            "requests answered, by API key name",
            ["key_name", "status"],
            registry=self.registry,
        ).labels
        self.key_tokens = Counter(
            "rcsd_key_tokens",
            "tokens (context + completion, or prompt + max_tokens) admitted, by API key name",
            ["key_name"],
            registry=self.registry,
        ).labels
        self.key_waiting = Gauge(
            "rcsd_key_queue_depth",
            "requests waiting for a slot, by API key name",
            ["key_name"],
            registry=self.registry,
        ).labels
        self.info = Gauge(
            "rcsd_service_info",
            "constant 1; labels say what is served: model, its revision, engine backend, rcsd version",
            ["service", "model", "revision", "backend", "version"],
            registry=self.registry,
        )
        self._service = service

    def describe_service(self, model: str, revision: str, backend: str) -> None:
        """Sets `rcsd_service_info` once the engine has loaded and the model's revision is known."""
        self.info.clear()
        self.info.labels(
            service=self._service, model=model, revision=revision, backend=backend, version=__version__
        ).set(1)

    def exposition(self) -> bytes:
        """The Prometheus text format of this service's metrics, then the process-wide ones.

        vLLM (`disable_log_stats=False`) registers `vllm:*` in prometheus_client's default registry,
        or, when `PROMETHEUS_MULTIPROC_DIR` is set, in files its engine processes share; the default
        registry also holds the process and platform collectors. Families already in ours are left
        out of theirs, so no name is exported twice.
        """
        ours = generate_latest(self.registry)
        own = {family.name for family in self.registry.collect()}
        process_wide = _process_wide_registry()
        theirs = CollectorRegistry()
        theirs.register(_Without(process_wide, own))
        return ours + generate_latest(theirs)


class _Without:
    """A registry's families, less some names."""

    def __init__(self, registry: CollectorRegistry, names: set[str]) -> None:
        self._registry = registry
        self._names = names

    def collect(self) -> Iterator[Metric]:
        return (family for family in self._registry.collect() if family.name not in self._names)


def _process_wide_registry() -> CollectorRegistry:
    """What vLLM's `get_prometheus_registry` reads from, without importing vLLM."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        # the multiprocess files hold only what engines wrote; this process's own figures come too
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR):
            registry.register(collector)
        return registry
    return REGISTRY
