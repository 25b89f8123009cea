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
BUNDLED_EXT_AUTHZ = data_dir("envoy") / "envoy-ext-authz.yaml"


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


def test_bundled_ext_authz_config_is_the_rendered_default() -> None:
    assert yaml.safe_load(BUNDLED_EXT_AUTHZ.read_text()) == render(Config(), mode="ext_authz"), (
        "envoy/envoy-ext-authz.yaml drifted: regenerate it with "
        "`extproc envoy render --mode ext_authz -o envoy/envoy-ext-authz.yaml`"
    )


def test_bundled_ext_authz_config_passes_envoy_validate() -> None:
    result = envoy_validate(BUNDLED_EXT_AUTHZ)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "settings",
    [
        {"server.failure_mode": "open", "server.workers": 3},
        {"envoy.upstream_url": "https://api.openai.com", "server.max_request_size_bytes": 65536},
    ],
)
def test_rendered_ext_authz_variants_pass_envoy_validate(
    tmp_path: Path, settings: dict[str, object]
) -> None:
    config = load_config(environ={}, overrides=settings.items())
    path = tmp_path / "envoy.yaml"
    path.write_text(render_yaml(config, mode="ext_authz"))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ext_authz_render_follows_config() -> None:
    config = load_config(
        environ={},
        overrides=[
            ("server.failure_mode", "open"),
            ("server.max_request_size_bytes", 100_000),
            ("security_analysis_timeout_ms", 2000),
            ("security_analysis.ml_budget_ms", 1000),
        ],
    )
    data = yaml.safe_load(render_yaml(config, mode="ext_authz"))
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]
    authz = hcm["http_filters"][0]["typed_config"]
    assert authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "extproc"
    assert authz["grpc_service"]["timeout"] == "2.5s"  # longer than the analysis budget
    assert authz["transport_api_version"] == "V3"
    assert authz["failure_mode_allow"] is True
    assert authz["with_request_body"] == {
        "max_request_bytes": 100_000,
        "allow_partial_message": False,
        "pack_as_bytes": True,
    }
    # Envoy's own fail-closed reply (extproc unreachable) is mapped to dialect JSON.
    expressions = [
        m["filter"]["extension_filter"]["typed_config"]["expression"]
        for m in hcm["local_reply_config"]["mappers"]
    ]
    assert sum("'ext_authz_error'" in e for e in expressions) == 2
    assert not any("ext_proc_error" in e for e in expressions)
    # Trace and verdict headers set on the upstream request are copied to the response.
    copied = hcm["route_config"]["virtual_hosts"][0]["response_headers_to_add"]
    assert {h["header"]["key"] for h in copied} >= {"x-llmtrace-trace-id", "x-llmtrace-flagged"}
    clusters = [c["name"] for c in data["static_resources"]["clusters"]]
    assert clusters == ["extproc", "llm_upstream"]


def test_render_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown Envoy mode"):
        render(Config(), mode="ext_magic")  # type: ignore[arg-type]


def test_cli_renders_the_ext_authz_mode(tmp_path: Path) -> None:
    from extproc.cli import main

    out = tmp_path / "envoy.yaml"
    assert main(["envoy", "render", "--mode", "ext_authz", "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Rendered by `extproc envoy render --mode ext_authz`")
    hcm = yaml.safe_load(text)["static_resources"]["listeners"][0]["filter_chains"][0]
    filters = hcm["filters"][0]["typed_config"]["http_filters"]
    assert filters[0]["name"] == "envoy.filters.http.ext_authz"
