"""The Istio / Kubernetes manifests in envoy/istio/ validate and match extproc's config.

Validators: Kubernetes core objects with `kubernetes-validate` (bundled OpenAPI schemas,
offline, strict: unknown fields fail); Istio CRs with the typed `cloudcoil-models-istio`
pydantic models (their models ignore unknown fields, so a lossless round trip is required
too); the EnvoyFilter's ext_proc patch with `envoy --mode validate` inside a full config.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config import Config, load_config
from extproc.detect.rules import load_rules
from extproc.envoy_config import _buffer_limit, _ext_authz_filter, _ext_proc_filter
from extproc.stack import envoy_binary

kubernetes_validate = pytest.importorskip("kubernetes_validate")
pytest.importorskip("cloudcoil.models.istio")

from cloudcoil.models.istio.networking import v1 as networking_v1  # noqa: E402
from cloudcoil.models.istio.networking import v1alpha3 as networking_v1alpha3  # noqa: E402
from cloudcoil.models.istio.security import v1 as security_v1  # noqa: E402

ISTIO_DIR = Path(__file__).resolve().parents[3] / "envoy" / "istio"
K8S_VERSION = "1.37.0"  # a version kubernetes-validate bundles schemas for
EXTPROC_SERVICE = "extproc.llm-security.svc.cluster.local"
ISTIO_CLUSTER = f"outbound|50051||{EXTPROC_SERVICE}"
PROTECT_LABEL = "llm-security/protect"

ISTIO_MODELS: dict[tuple[str, str], Any] = {
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): networking_v1alpha3.EnvoyFilter,
    ("networking.istio.io/v1", "ServiceEntry"): networking_v1.ServiceEntry,
    ("networking.istio.io/v1", "DestinationRule"): networking_v1.DestinationRule,
    ("security.istio.io/v1", "AuthorizationPolicy"): security_v1.AuthorizationPolicy,
}
# No typed model covers these; their content is checked field by field below.
UNTYPED = {("install.istio.io/v1alpha1", "IstioOperator")}


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ISTIO_DIR / name).read_text()) if d]


def _all_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in sorted(ISTIO_DIR.glob("*.yaml")) for d in _docs(p.name)]


def _one(name: str, kind: str, meta_name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in _docs(name)
        if d["kind"] == kind and (meta_name is None or d["metadata"]["name"] == meta_name)
    ]
    assert len(found) == 1, f"{name}: expected one {kind} {meta_name or ''}"
    return found[0]


def _manifest_config(tmp_path: Path) -> Config:
    """extproc's Config as the Deployment loads it from the ConfigMap."""
    data = _one("extproc.yaml", "ConfigMap", "extproc-config")["data"]
    path = tmp_path / "extproc.yaml"
    path.write_text(data["extproc.yaml"])
    return load_config(path, environ={})


def istio_ext_proc_patch(config: Config) -> dict[str, Any]:
    """The EnvoyFilter patch value: the rendered ext_proc filter on Istio's cluster name."""
    value = copy.deepcopy(_ext_proc_filter(config))
    value["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = ISTIO_CLUSTER
    return value


def _patches(apply_to: str) -> list[dict[str, Any]]:
    spec = _one("envoyfilter-ext-proc.yaml", "EnvoyFilter")["spec"]
    return [p for p in spec["configPatches"] if p["applyTo"] == apply_to]


# --- schema validation -------------------------------------------------------------------


def test_every_istio_resource_has_a_validator() -> None:
    for name, doc in _all_docs():
        key = (doc["apiVersion"], doc["kind"])
        if doc["apiVersion"].split("/")[0].endswith("istio.io"):
            assert key in ISTIO_MODELS or key in UNTYPED, f"{name}: no validator for {key}"


@pytest.mark.parametrize(
    ("name", "doc"),
    [
        pytest.param(n, d, id=f"{n}:{d['kind']}:{d['metadata']['name']}")
        for n, d in _all_docs()
        if (d["apiVersion"], d["kind"]) not in ISTIO_MODELS
        and (d["apiVersion"], d["kind"]) not in UNTYPED
    ],
)
def test_kubernetes_objects_validate(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_a_typo() -> None:
    deployment = copy.deepcopy(_one("extproc.yaml", "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {
        "httpGet": {"path": "/health", "port": 8081}
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("name", "doc"),
    [
        pytest.param(n, d, id=f"{n}:{d['kind']}:{d['metadata']['name']}")
        for n, d in _all_docs()
        if (d["apiVersion"], d["kind"]) in ISTIO_MODELS
    ],
)
def test_istio_resources_validate(name: str, doc: dict[str, Any]) -> None:
    model = ISTIO_MODELS[(doc["apiVersion"], doc["kind"])].model_validate(doc)
    # The models drop unknown fields silently: a lossless round trip means there were none.
    assert model.model_dump(mode="json", by_alias=True, exclude_none=True) == doc


def test_istio_models_reject_a_bad_value() -> None:
    policy = copy.deepcopy(_one("ext-authz.yaml", "AuthorizationPolicy"))
    policy["spec"]["action"] = "CUSTOMISE"
    with pytest.raises(ValueError):
        security_v1.AuthorizationPolicy.model_validate(policy)


# --- the manifests match extproc's configuration -------------------------------------------


def test_configmap_config_loads_with_extproc_defaults(tmp_path: Path) -> None:
    config = _manifest_config(tmp_path)
    defaults = Config()
    assert config.server.grpc_port == defaults.server.grpc_port == 50051
    assert config.server.admin_port == defaults.server.admin_port == 8081
    assert config.server.grpc_host == config.server.admin_host == "0.0.0.0"
    assert config.envoy_message_timeout_ms > config.security_analysis.ml_budget_ms


def test_policy_configmap_packs_load(tmp_path: Path) -> None:
    data = _one("extproc.yaml", "ConfigMap", "extproc-policies")["data"]
    paths = []
    for key, text in data.items():
        path = tmp_path / key
        path.write_text(text)
        paths.append(path)
    assert load_rules(paths)


def test_deployment_ports_probes_and_security(tmp_path: Path) -> None:
    config = _manifest_config(tmp_path)
    pod = _one("extproc.yaml", "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc-extproc": config.server.grpc_port,
        "http-admin": config.server.admin_port,
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http-admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http-admin"}
    assert container["resources"]["requests"]["cpu"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    config_path = container["args"][container["args"].index("--config") + 1]
    assert config_path in mounts
    assert config.storage.journal_dir is None or any(
        str(config.storage.journal_dir).startswith(m) for m in mounts
    )


def test_service_pdb_hpa() -> None:
    service = _one("extproc.yaml", "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc-extproc"]["port"] == 50051
    assert ports["grpc-extproc"]["appProtocol"] == "grpc"
    assert ports["http-admin"]["port"] == 8081
    meta = service["metadata"]
    assert f"{meta['name']}.{meta['namespace']}.svc.cluster.local" == EXTPROC_SERVICE
    labels = _one("extproc.yaml", "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = _one("extproc.yaml", "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = _one("extproc.yaml", "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "extproc"
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]


def test_envoyfilter_patch_is_the_rendered_filter(tmp_path: Path) -> None:
    config = _manifest_config(tmp_path)
    spec = _one("envoyfilter-ext-proc.yaml", "EnvoyFilter")["spec"]
    assert spec["workloadSelector"]["labels"] == {PROTECT_LABEL: "true"}
    (patch,) = _patches("HTTP_FILTER")
    assert patch["match"]["context"] in ("SIDECAR_INBOUND", "GATEWAY")
    hcm = patch["match"]["listener"]["filterChain"]["filter"]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    assert hcm["subFilter"]["name"] == "envoy.filters.http.router"
    assert patch["patch"]["operation"] == "INSERT_BEFORE"
    assert patch["patch"]["value"] == istio_ext_proc_patch(config), (
        "envoyfilter-ext-proc.yaml drifted from `extproc envoy render`"
    )
    typed = patch["patch"]["value"]["typed_config"]
    assert typed["failure_mode_allow"] is False
    assert typed["allow_mode_override"] is True
    (listener,) = _patches("LISTENER")
    assert listener["patch"]["value"]["per_connection_buffer_limit_bytes"] == _buffer_limit(config)


def test_envoyfilter_patch_passes_envoy_validate(tmp_path: Path) -> None:
    (patch,) = _patches("HTTP_FILTER")
    (listener_patch,) = _patches("LISTENER")
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound",
        "route_config": {
            "name": "inbound",
            "virtual_hosts": [
                {
                    "name": "app",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                }
            ],
        },
        "http_filters": [patch["patch"]["value"], router],
    }

    def cluster(name: str, port: int, http2: bool) -> dict[str, Any]:
        result: dict[str, Any] = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "127.0.0.1",
                                            "port_value": port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
        if http2:
            result["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                    "HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
        return result

    bootstrap = {
        "static_resources": {
            "listeners": [
                {
                    "name": "virtualInbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}},
                    **listener_patch["patch"]["value"],
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [cluster(ISTIO_CLUSTER, 50051, True), cluster("app", 8080, False)],
        }
    }
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ext_authz_provider_matches_rendered_ext_authz(tmp_path: Path) -> None:
    config = _manifest_config(tmp_path)
    rendered = _ext_authz_filter(config)["typed_config"]
    operator = _one("ext-authz.yaml", "IstioOperator")
    (provider,) = operator["spec"]["meshConfig"]["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    assert set(grpc) <= {
        "service",
        "port",
        "timeout",
        "failOpen",
        "statusOnError",
        "includeRequestBodyInCheck",
        "includeRequestHeadersInCheck",
        "headersToUpstreamOnAllow",
        "headersToDownstreamOnDeny",
    }
    assert grpc["service"] == EXTPROC_SERVICE
    assert grpc["port"] == config.server.grpc_port
    assert grpc["timeout"] == rendered["grpc_service"]["timeout"]
    assert grpc["failOpen"] is rendered["failure_mode_allow"]
    assert grpc["statusOnError"] == str(rendered["status_on_error"]["code"])
    body = rendered["with_request_body"]
    assert grpc["includeRequestBodyInCheck"] == {
        "maxRequestBytes": body["max_request_bytes"],
        "allowPartialMessage": body["allow_partial_message"],
        "packAsBytes": body["pack_as_bytes"],
    }
    policy = _one("ext-authz.yaml", "AuthorizationPolicy")["spec"]
    assert policy["action"] == "CUSTOM"
    assert policy["provider"]["name"] == provider["name"] == "extproc"
    assert PROTECT_LABEL in policy["selector"]["matchLabels"]
    # One path per workload: the ext_authz label value differs from the EnvoyFilter's.
    assert policy["selector"]["matchLabels"][PROTECT_LABEL] != "true"


def test_llm_providers_originate_tls() -> None:
    entry = _one("llm-providers.yaml", "ServiceEntry")["spec"]
    assert set(entry["hosts"]) == {"api.openai.com", "api.anthropic.com"}
    assert entry["location"] == "MESH_EXTERNAL"
    ports = {p["number"]: p for p in entry["ports"]}
    assert ports[443]["protocol"] == "TLS"
    assert ports[80]["protocol"] == "HTTP"
    assert ports[80]["targetPort"] == 443
    rules = {
        d["spec"]["host"]: d["spec"]
        for d in _docs("llm-providers.yaml")
        if d["kind"] == "DestinationRule"
    }
    assert set(rules) == set(entry["hosts"])
    for host, spec in rules.items():
        (setting,) = spec["trafficPolicy"]["portLevelSettings"]
        assert setting["port"]["number"] == 80
        assert setting["tls"] == {"mode": "SIMPLE", "sni": host}
