"""docs/reference.md is generated from the Config models and must not go stale."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from extproc.cli import main
from extproc.config import Config
from extproc.config_reference import all_rows, render_reference, undescribed_fields
from tests.unit.config.test_docs import setting_paths

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "reference.md"
REGENERATE = "extproc config reference --output docs/reference.md"

# Settings still without a `description=` in extproc/config.py. Remove a path here once its
# Field gets one; a new setting must come with a description (not be added here).
UNDESCRIBED = {
    "enable_security_analysis",
    "security_analysis_timeout_ms",
    "enforcement.mode",
    "enforcement.min_severity",
    "enforcement.min_confidence",
    "enforcement.categories",
    "enforcement.categories[].finding_type",
    "enforcement.categories[].action",
    "enforcement.block_status_code",
    "pii.action",
    "output_safety.enabled",
    "rate_limiting.enabled",
    "rate_limiting.tenant_overrides",
    "rate_limiting.tenant_overrides.<name>.requests_per_second",
    "rate_limiting.tenant_overrides.<name>.burst_size",
    "cost_estimation.enabled",
    "cost_estimation.custom_models.<name>.input_per_million",
    "cost_estimation.custom_models.<name>.output_per_million",
    "cost_caps.enabled",
    "cost_caps.default_budget_caps",
    "cost_caps.default_budget_caps[].window",
    "cost_caps.default_budget_caps[].hard_limit_usd",
    "cost_caps.default_budget_caps[].soft_limit_usd",
    "cost_caps.default_token_cap",
    "cost_caps.agents",
    "cost_caps.agents[].agent_id",
    "cost_caps.agents[].budget_caps[].window",
    "cost_caps.agents[].budget_caps[].hard_limit_usd",
    "cost_caps.agents[].budget_caps[].soft_limit_usd",
    "action_router.enabled",
    "action_router.rules",
    "action_router.rules[].min_severity",
    "action_router.rules[].min_confidence",
    "action_router.rules[].actions",
    "action_router.ip_block.ttl_seconds",
    "action_router.ip_block.max_offenses",
    "action_router.webhook.url",
    "action_router.webhook.timeout_ms",
    "alerts.enabled",
    "alerts.channels",
    "alerts.channels[].type",
    "alerts.channels[].min_severity",
    "alerts.max_retries",
    "anomaly_detection.enabled",
    "anomaly_detection.check_cost",
    "anomaly_detection.check_tokens",
    "anomaly_detection.check_velocity",
    "anomaly_detection.check_latency",
    "circuit_breaker.enabled",
    "server.grpc_host",
    "server.grpc_port",
    "server.admin_host",
    "server.admin_port",
    "server.max_request_size_bytes",
    "server.max_response_size_bytes",
    "envoy.listen_host",
    "envoy.listen_port",
    "envoy.admin_port",
    "envoy.concurrency",
    "logging.level",
    "logging.format",
}


def test_reference_is_up_to_date() -> None:
    expected = render_reference()
    actual = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                actual.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "docs/reference.md (committed)",
                "render_reference()",
                n=1,
            )
        )
        pytest.fail(f"docs/reference.md is stale; regenerate it with `{REGENERATE}`\n{diff[:4000]}")


def test_reference_says_it_is_generated() -> None:
    head = render_reference().splitlines()[0]
    assert "extproc config reference" in head and "do not edit by hand" in head


def test_every_setting_path_is_in_the_reference() -> None:
    text = render_reference()
    missing = [p for p in setting_paths(Config) if f"| `{p}` |" not in text]
    assert missing == [], f"settings missing from the generated reference: {missing}"


def test_rows_are_unique_and_env_names_match_paths() -> None:
    rows = all_rows()
    keys = [row.key for row in rows]
    assert len(keys) == len(set(keys))
    for row in rows:
        if row.env:
            assert row.env == "EXTPROC_" + row.key.upper().replace(".", "__")


def test_every_setting_has_a_description_or_is_listed() -> None:
    missing = undescribed_fields()
    new = sorted(set(missing) - UNDESCRIBED)
    assert new == [], f"give these settings a Field(description=...): {new}"


def test_the_undescribed_list_holds_no_described_setting() -> None:
    done = sorted(UNDESCRIBED - set(undescribed_fields()))
    assert done == [], f"these now have descriptions; remove them from UNDESCRIBED: {done}"


def test_render_is_deterministic() -> None:
    assert render_reference() == render_reference()


def test_cli_writes_the_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reference.md"
    assert main(["config", "reference", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render_reference()
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == render_reference()
