"""The bundled Envoy config matches what extproc renders, and Envoy accepts every variant."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from extproc.config import Config, load_config
from extproc.envoy_config import render, render_yaml
from extproc.resources import data_dir
from extproc.stack import envoy_binary

BUNDLED = data_dir("envoy") / "envoy.yaml"


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bundled_config_is_the_rendered_default() -> None:
    assert yaml.safe_load(BUNDLED.read_text()) == render(Config()), (
        "envoy/envoy.yaml drifted: regenerate it with `extproc envoy render -o envoy/envoy.yaml`"
    )


def test_bundled_config_passes_envoy_validate() -> None:
    result = envoy_validate(BUNDLED)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "settings",
    [
        {"server.failure_mode": "open", "server.workers": 3},
        {"envoy.upstream_url": "https://api.openai.com", "server.max_request_size_bytes": 65536},
        {
            "envoy.upstream_url": "http://llm.internal:8000",
            "security_analysis_timeout_ms": 200,
            "security_analysis.ml_budget_ms": 100,
        },
    ],
)
def test_rendered_variants_pass_envoy_validate(tmp_path: Path, settings: dict[str, object]) -> None:
    config = load_config(environ={}, overrides=settings.items())
    path = tmp_path / "envoy.yaml"
    path.write_text(render_yaml(config))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_render_follows_config() -> None:
    config = load_config(
        environ={},
        overrides=[
            ("server.failure_mode", "open"),
            ("server.workers", 2),
            ("envoy.upstream_url", "https://api.anthropic.com"),
            ("server.max_request_size_bytes", 100_000),
            ("server.max_response_size_bytes", 50_000),
        ],
    )
    data = yaml.safe_load(render_yaml(config))
    listener = data["static_resources"]["listeners"][0]
    assert listener["per_connection_buffer_limit_bytes"] == 100_000
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = hcm["http_filters"][0]["typed_config"]
    assert ext_proc["failure_mode_allow"] is True
    assert ext_proc["allow_mode_override"] is True
    assert ext_proc["message_timeout"] == "5.5s"
    clusters = {c["name"]: c for c in data["static_resources"]["clusters"]}
    endpoints = clusters["extproc"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints]
    assert ports == [50051, 50052]
    upstream = clusters["llm_upstream"]
    assert upstream["transport_socket"]["typed_config"]["sni"] == "api.anthropic.com"
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["host_rewrite_literal"] == "api.anthropic.com"
