"""The opt-in monitoring (ServiceMonitor), autoscaling (KEDA ScaledObject) and the Grafana dashboard.

kubernetes-validate has no schema for custom resources, so the rendered ServiceMonitor and ScaledObject
are checked by k8s_render.crd_problems (required fields, and that what they name exists). Every metric
a dashboard query or the ScaledObject's query names must be one the services export:

- `rcsd_*`: read from the services' own registry (rcsd.services.kit.metrics.ServiceMetrics), with the
  suffixes Prometheus gives each type (a counter's `_total`, a histogram's `_bucket`/`_sum`/`_count`);
- `vllm:*`: VLLM_METRICS below, each checked against the metric definitions of the installed vLLM
  (`vllm/v1/metrics/loggers.py` of 0.32, the version the images pin; the names and types are those of
  https://docs.vllm.ai/en/v0.32.0/usage/metrics/). Older names such as `vllm:gpu_cache_usage_perc`
  are gone from it, which is what this catches;
- `process_*`: prometheus_client's own process collector, read from it.
"""

from __future__ import annotations

import json
import re
from importlib import util
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector

from rcsd.services.kit.metrics import ServiceMetrics
from tests.deploy.k8s_render import ROOT, Rendered, render_with_components, validate

DASHBOARD = ROOT / "deploy" / "grafana" / "rcsd.json"
# The engine's metrics the dashboard reads, by type (vLLM 0.32's v1/metrics/loggers.py).
VLLM_METRICS = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
}
SUFFIXES = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"], "info": [""]}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or"}
PROMQL_WORDS |= {"unless", "inf", "nan"}


def _exported(families: dict[str, str]) -> set[str]:
    return {name + suffix for name, kind in families.items() for suffix in SUFFIXES[kind]}


def rcsd_metric_names() -> set[str]:
    registry = ServiceMetrics("teacher").registry
    return _exported({family.name: family.type for family in registry.collect()})


def process_metric_names() -> set[str]:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return {sample.name for family in registry.collect() for sample in family.samples}


def known_metric_names() -> set[str]:
    return rcsd_metric_names() | _exported(VLLM_METRICS) | process_metric_names()


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and numbers left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\blabel_values\(([^,]*),\s*\w+\s*\)", r"\1", expr)  # Grafana's: (metric, label)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        name, call = match.groups()
        if call is None and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def test_the_extractor_reads_promql() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, job) (rate(vllm:e2e_request_latency_seconds_bucket{job=~"$s"}[5m])))'
    ) == {"vllm:e2e_request_latency_seconds_bucket"}
    assert metric_names("sum(a_total) / sum without (pod) (b{x='y'}) > bool 0.5") == {"a_total", "b"}
    assert metric_names('label_values(rcsd_service_info{namespace="$namespace"}, job)') == {
        "rcsd_service_info"
    }


def test_every_dashboard_metric_is_exported() -> None:
    known = known_metric_names()
    assert {"rcsd_queue_depth", "rcsd_requests_total", "rcsd_request_seconds_bucket"} <= known
    queries = dashboard_queries()
    assert queries
    unknown = {name for q in queries for name in metric_names(q)} - known
    assert unknown == set()


def test_an_unknown_metric_is_caught() -> None:
    assert "vllm:gpu_cache_usage_perc" not in known_metric_names(), "vLLM's pre-V1 name"
    assert metric_names("max(vllm:gpu_cache_usage_perc)") - known_metric_names() == {
        "vllm:gpu_cache_usage_perc"
    }


def test_the_vllm_names_are_vllms() -> None:
    spec = util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vllm is not installed")
    source = (Path(spec.origin).parent / "v1" / "metrics" / "loggers.py").read_text()
    pattern = r"_(gauge|counter|histogram)_cls\(\s*name=\"(vllm:\w+)\""
    defined = {name: kind for kind, name in re.findall(pattern, source)}
    assert {name: defined.get(name) for name in VLLM_METRICS} == VLLM_METRICS


def test_the_dashboard_is_a_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "service"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"]
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, used


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """overlays/gpu with both opt-in components, added the way deploy/README.md says."""
    return render_with_components(tmp_path_factory.mktemp("observed"), "overlays/gpu", ["monitoring", "keda"])


def test_the_opt_in_components_render_and_validate(observed: Rendered) -> None:
    validate(observed)
    assert {r["metadata"].get("namespace") for r in observed.values()} == {"rcsd"}


def test_the_service_monitor_scrapes_each_pod_once(observed: Rendered) -> None:
    monitor = observed["ServiceMonitor", "rcsd"]["spec"]
    (expression,) = monitor["selector"]["matchExpressions"]
    selected = [
        name
        for (kind, name), r in observed.items()
        if kind == "Service"
        and r["metadata"].get("labels", {}).get(expression["key"]) in expression["values"]
    ]
    assert sorted(selected) == ["rcsd-rubric", "rcsd-teacher"], "not the headless *-pods Services too"
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": "rcsd-api-key", "key": "api-key"}


def test_keda_scales_the_teacher_on_its_queue(observed: Rendered) -> None:
    scaled = observed["ScaledObject", "rcsd-teacher"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "rcsd-teacher"
    assert scaled["minReplicaCount"] >= 1, "never to zero: a replica loads its model for minutes"
    (trigger,) = scaled["triggers"]
    query = trigger["metadata"]["query"]
    assert metric_names(query) == {"rcsd_queue_depth"} <= known_metric_names()
    # The labels the ServiceMonitor's targets carry: job = the scraped Service, the overlay's namespace.
    assert 'job="rcsd-teacher"' in query and 'namespace="rcsd"' in query
