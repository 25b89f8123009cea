"""The Grafana dashboard queries only metrics (and labels) that extproc really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from extproc.telemetry.metrics import Metrics

GRAFANA = Path(__file__).resolve().parents[3] / "compose" / "grafana"
DASHBOARD = GRAFANA / "extproc-dashboard.json"
METRIC = re.compile(r"\bextproc_[a-z0-9_]+\b")
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Added by Prometheus to every scraped series, not by extproc.
TARGET_LABELS = {"instance", "job"}
# The series each metric type is exposed as.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
}


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Every exposed series name of a fresh Metrics(), with its labels (from the registry)."""
    with pytest.MonkeyPatch.context() as mp:
        # Multiprocess mode registers on a private registry; test the plain one.
        mp.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        metrics = Metrics()
    labels = {
        m._name: set(m._labelnames)
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for suffix in SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            names[family.name + suffix] = labels.get(family.name, set()) | extra
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            found.append(
                (f"variable {var['name']}", query["query"] if isinstance(query, dict) else query)
            )
    return found


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_every_query_uses_exported_metrics_and_labels(
    dashboard: dict[str, Any], exported: dict[str, set[str]]
) -> None:
    problems = []
    for where, expr in queries(dashboard):
        used = METRIC.findall(expr)
        if not used:
            problems.append(f"{where}: no extproc metric in {expr!r}")
        unknown = [m for m in used if m not in exported]
        if unknown:
            problems.append(f"{where}: not exported: {unknown}")
            continue
        allowed = TARGET_LABELS.union(*(exported[m] for m in used))
        for group in BY.findall(expr):
            bad = {label.strip() for label in group.split(",") if label.strip()} - allowed
            if bad:
                problems.append(f"{where}: labels {sorted(bad)} not on {used}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "metric",
    [
        "extproc_requests_total",
        "extproc_findings_total",
        "extproc_phase_duration_seconds_bucket",
        "extproc_ml_batch_seconds_bucket",
        "extproc_ml_batch_size_bucket",
        "extproc_ml_queue_depth",
        "extproc_ml_skipped_total",
        "extproc_storage_queue_depth",
        "extproc_storage_records_total",
        "extproc_admission_denials_total",
        "extproc_spend_usd_total",
        "extproc_budget_events_total",
        "extproc_webhook_deliveries_total",
        "extproc_cache_fallbacks_total",
        "extproc_active_streams",
        "extproc_config_reloads_total",
        "extproc_circuit_breaker_state",
    ],
)
def test_dashboard_covers(dashboard: dict[str, Any], metric: str) -> None:
    assert any(metric in METRIC.findall(expr) for _, expr in queries(dashboard))


def test_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["uid"] == "prometheus"  # the DS_PROMETHEUS variable's default
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/extproc.yaml").read_text())
    assert providers["providers"][0]["type"] == "file"
    assert providers["providers"][0]["options"]["path"]
