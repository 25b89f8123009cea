"""Anomaly detection: per-tenant baselines, spikes per dimension, velocity, memory bound."""

from __future__ import annotations

import random
import statistics
from typing import Any

import pytest

from extproc.config import AnomalyDetectionConfig
from extproc.detect.findings import Severity
from extproc.telemetry import anomaly as anomaly_module
from extproc.telemetry.anomaly import Anomaly, AnomalyDetector, _Window
from extproc.telemetry.metrics import Metrics

T0 = 1_699_999_980.0  # a multiple of 60: intervals start at T0 + n * 60


class Clock:
    """A settable clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(**overrides: Any) -> AnomalyDetectionConfig:
    settings: dict[str, Any] = {"enabled": True, "min_samples": 10, "sigma_threshold": 3.0}
    settings.update(overrides)
    return AnomalyDetectionConfig(**settings)


def normal(detector: AnomalyDetector, tenant: str | None, i: int) -> list[Anomaly]:
    """One ordinary request: values alternate a little so the baseline has variance."""
    wobble = i % 2
    return detector.observe(
        tenant_id=tenant,
        cost_usd=0.010 + 0.002 * wobble,
        tokens=100 + 20 * wobble,
        latency_ms=200.0 + 40 * wobble,
    )


def anomaly_count(metrics: Metrics, kind: str) -> float:
    value = metrics.registry.get_sample_value("extproc_anomalies_total", {"type": kind})
    return value or 0.0


def test_a_spike_in_each_dimension_is_flagged_once() -> None:
    metrics = Metrics()
    # A frozen clock keeps every request in one interval, so velocity has no baseline.
    detector = AnomalyDetector(config(), metrics, clock=Clock())
    for i in range(30):
        assert normal(detector, "acme", i) == []
    found = detector.observe(tenant_id="acme", cost_usd=0.5, tokens=5000, latency_ms=9000.0)
    assert sorted(a.type for a in found) == ["cost_spike", "latency_spike", "token_spike"]
    by_type = {a.type: a for a in found}
    tokens = by_type["token_spike"]
    assert tokens.tenant_id == "acme"
    assert tokens.value == 5000
    assert tokens.mean == pytest.approx(110)
    # The sample std (~10.2) is under the floor of 10% of the mean, so the floor is used.
    assert statistics.stdev([100, 120] * 15) < 11
    assert tokens.std == pytest.approx(11)
    assert tokens.sigma == pytest.approx((5000 - 110) / tokens.std)
    assert tokens.timestamp == T0
    # The next ordinary request is ordinary again.
    assert normal(detector, "acme", 0) == []
    for kind in ("cost_spike", "token_spike", "latency_spike"):
        assert anomaly_count(metrics, kind) == 1
    assert anomaly_count(metrics, "velocity_spike") == 0


def test_only_the_spiking_dimension_is_flagged() -> None:
    detector = AnomalyDetector(config(), Metrics(), clock=Clock())
    for i in range(20):
        normal(detector, "acme", i)
    found = detector.observe(tenant_id="acme", cost_usd=0.011, tokens=110, latency_ms=5000.0)
    assert [a.type for a in found] == ["latency_spike"]


def test_baselines_are_per_tenant() -> None:
    detector = AnomalyDetector(config(), Metrics(), clock=Clock())
    for i in range(20):
        normal(detector, "small", i)
        detector.observe(
            tenant_id="big", cost_usd=None, tokens=5000 + 100 * (i % 2), latency_ms=None
        )
    # Normal for "big", a spike for "small".
    assert detector.observe(tenant_id="big", cost_usd=None, tokens=5050, latency_ms=None) == []
    found = detector.observe(tenant_id="small", cost_usd=None, tokens=5050, latency_ms=None)
    assert [a.type for a in found] == ["token_spike"]


def test_no_anomaly_below_min_samples() -> None:
    detector = AnomalyDetector(config(min_samples=10), Metrics(), clock=Clock())
    for i in range(9):
        normal(detector, "acme", i)
    # Nine values are not a baseline yet.
    assert detector.observe(tenant_id="acme", cost_usd=9.0, tokens=90000, latency_ms=9e5) == []


def test_disabled_checks_and_disabled_detector_flag_nothing() -> None:
    quiet = config(check_cost=False, check_tokens=False, check_latency=False)
    detector = AnomalyDetector(quiet, Metrics(), clock=Clock())
    for i in range(20):
        normal(detector, "acme", i)
    assert detector.observe(tenant_id="acme", cost_usd=9.0, tokens=90000, latency_ms=9e5) == []

    off = AnomalyDetector(config(enabled=False), Metrics(), clock=Clock())
    for i in range(20):
        normal(off, "acme", i)
    assert off.observe(tenant_id="acme", cost_usd=9.0, tokens=90000, latency_ms=9e5) == []
    assert off.tenants == 0  # nothing is tracked while disabled


def test_missing_and_nonsense_values_are_neither_judged_nor_learnt() -> None:
    detector = AnomalyDetector(config(), Metrics(), clock=Clock())
    for i in range(20):
        normal(detector, "acme", i)
    for bad in (None, float("nan"), float("inf"), -5.0):
        assert detector.observe(tenant_id="acme", cost_usd=bad, tokens=None, latency_ms=None) == []
    found = detector.observe(tenant_id="acme", cost_usd=1.0, tokens=None, latency_ms=None)
    assert [a.type for a in found] == ["cost_spike"]


def test_flat_baseline_needs_more_than_a_tiny_change() -> None:
    detector = AnomalyDetector(config(), Metrics(), clock=Clock())
    for _ in range(20):
        detector.observe(tenant_id="acme", cost_usd=None, tokens=100, latency_ms=None)
    # std is 0; the floor (10% of the mean) makes the bar 100 + 3 * 10 = 130 tokens.
    assert detector.observe(tenant_id="acme", cost_usd=None, tokens=101, latency_ms=None) == []
    assert detector.observe(tenant_id="acme", cost_usd=None, tokens=129, latency_ms=None) == []
    [spike] = detector.observe(tenant_id="acme", cost_usd=None, tokens=200, latency_ms=None)
    assert spike.type == "token_spike"
    assert spike.std == pytest.approx(spike.mean * 0.1)


def test_zero_cost_baseline_uses_the_absolute_floor() -> None:
    detector = AnomalyDetector(config(), Metrics(), clock=Clock())
    for _ in range(20):
        detector.observe(tenant_id="self-hosted", cost_usd=0.0, tokens=None, latency_ms=None)
    assert (
        detector.observe(tenant_id="self-hosted", cost_usd=2e-6, tokens=None, latency_ms=None) == []
    )
    [spike] = detector.observe(tenant_id="self-hosted", cost_usd=0.01, tokens=None, latency_ms=None)
    assert spike.type == "cost_spike"


def _requests(detector: AnomalyDetector, clock: Clock, interval: int, count: int) -> list[Anomaly]:
    """`count` requests spread over interval number `interval` (60 s each)."""
    found: list[Anomaly] = []
    for k in range(count):
        clock.now = T0 + interval * 60 + k * (59 / max(count, 1))
        found += detector.observe(tenant_id="acme", cost_usd=None, tokens=None, latency_ms=None)
    return found


def test_velocity_spike_is_flagged_once_in_the_interval_it_happens() -> None:
    metrics = Metrics()
    clock = Clock()
    detector = AnomalyDetector(config(velocity_interval_seconds=60), metrics, clock=clock)
    counts = [4, 5, 6] * 4  # mean 5, sample std ~0.85 (floored to 1): bar 5 + 3 = 8
    for interval, count in enumerate([3, *counts]):  # interval 0 is partial: not in the baseline
        assert _requests(detector, clock, interval, count) == []
    surge = len(counts) + 1
    found: list[tuple[int, Anomaly]] = []
    for k in range(40):
        clock.now = T0 + surge * 60 + k
        for a in detector.observe(tenant_id="acme", cost_usd=None, tokens=None, latency_ms=None):
            found.append((k + 1, a))
    [(nth, spike)] = found
    assert spike.type == "velocity_spike"
    assert nth == 9  # flagged by the request that crossed the bar, not at the interval's end
    assert spike.value == 9
    assert spike.mean == pytest.approx(5)
    assert spike.std == pytest.approx(1.0)
    # The next interval is back to normal: no anomaly, and the surge is in the baseline now.
    assert _requests(detector, clock, surge + 1, 5) == []
    assert anomaly_count(metrics, "velocity_spike") == 1


def test_velocity_counts_idle_intervals_as_zero() -> None:
    clock = Clock()
    detector = AnomalyDetector(config(velocity_interval_seconds=60), Metrics(), clock=clock)
    _requests(detector, clock, 0, 1)  # partial first interval
    _requests(detector, clock, 1, 10)
    # A long silence: its (capped) empty intervals make the baseline mostly zeros.
    found = _requests(detector, clock, 1000, 11)
    [spike] = found
    assert spike.type == "velocity_spike"
    assert spike.value == 4  # mean ~0.1, std floored to 1: the bar is ~3.1 requests
    assert spike.mean < 0.2


def test_severity_confidence_and_conversions() -> None:
    def at(sigma: float) -> Anomaly:
        return Anomaly("cost_spike", "acme", 1.0 + sigma * 0.1, 1.0, 0.1, sigma, 3.0, T0)

    assert at(3.1).severity is Severity.MEDIUM
    assert at(3.1).confidence == pytest.approx(0.5 + 0.25 * (3.1 / 3 - 1))
    assert (at(6.0).severity, at(6.0).confidence) == (Severity.HIGH, 0.75)
    assert at(30.0).confidence == 0.99

    finding = at(6.0).to_finding()
    assert (finding.type, finding.severity, finding.confidence) == (
        "cost_spike",
        Severity.HIGH,
        0.75,
    )
    assert (finding.start, finding.end, finding.detector) == (0, 0, "anomaly")
    assert finding.rule_id == "anomaly.cost_spike"
    assert finding.category is anomaly_module.ANOMALY_CATEGORY

    alert = at(6.0).to_alert("trace-1")
    assert (alert.kind, alert.type, alert.severity, alert.score) == (
        "anomaly",
        "cost_spike",
        Severity.HIGH,
        75,
    )
    assert (alert.tenant_id, alert.trace_id, alert.timestamp) == ("acme", "trace-1", T0)
    assert alert.details["sigma"] == 6.0
    assert alert.details["unit"] == "USD"
    assert "acme" in alert.summary and "6.0 sigma" in alert.summary


def test_tenants_are_bounded_least_recent_evicted() -> None:
    metrics = Metrics()
    detector = AnomalyDetector(config(), metrics, clock=Clock(), max_tenants=3)
    for i in range(20):
        for tenant in ("a", "b", "c"):
            normal(detector, tenant, i)
    normal(detector, "a", 0)  # "a" is now the most recent; "b" the least
    normal(detector, "d", 0)
    assert detector.tenants == 3
    assert metrics.registry.get_sample_value("extproc_anomaly_tenants") == 3
    spike = {"cost_usd": None, "tokens": 9000, "latency_ms": None}
    assert detector.observe(tenant_id="a", **spike) != []  # kept its baseline
    assert detector.observe(tenant_id="b", **spike) == []  # evicted: starts afresh


def test_default_tenant_cap_shrinks_for_large_windows() -> None:
    assert AnomalyDetector(config(window_size=100), Metrics()).max_tenants == 10_000
    assert AnomalyDetector(config(window_size=1000), Metrics()).max_tenants == 1_000


def test_reconfigure_keeps_or_restarts_baselines() -> None:
    detector = AnomalyDetector(config(), Metrics(), clock=Clock())
    for i in range(20):
        normal(detector, "acme", i)
    detector.reconfigure(config(sigma_threshold=4.0))  # thresholds only: baselines kept
    assert detector.tenants == 1
    assert detector.observe(tenant_id="acme", cost_usd=None, tokens=9000, latency_ms=None) != []
    detector.reconfigure(config(sigma_threshold=4.0, window_size=50))  # restart
    assert detector.tenants == 0
    assert detector.observe(tenant_id="acme", cost_usd=None, tokens=9000, latency_ms=None) == []
    detector.reconfigure(config(window_size=50, check_tokens=False))
    normal(detector, "acme", 0)
    assert detector.observe(tenant_id="acme", cost_usd=None, tokens=9000, latency_ms=None) == []


def test_window_statistics_match_an_exact_computation() -> None:
    rng = random.Random(7)
    window = _Window(50)
    values: list[float] = []
    for _ in range(1234):  # many replacements, past several exact recomputations
        x = rng.lognormvariate(3, 1.5)
        window.add(x)
        values.append(x)
        recent = values[-50:]
        if len(recent) >= 2:
            assert window.mean == pytest.approx(statistics.fmean(recent), rel=1e-9)
            assert window.std == pytest.approx(statistics.stdev(recent), rel=1e-6)
