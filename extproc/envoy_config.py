"""Render the Envoy configuration that matches an extproc Config.

Two modes: `ext_proc` (the full filter: request and response bodies) and `ext_authz` (a
Check before the upstream, for meshes that only allow ext_authz). The bundled
`envoy/envoy.yaml` is `render(Config())` and `envoy/envoy-ext-authz.yaml` is
`render(Config(), mode="ext_authz")`; a test fails when either drifts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from extproc.config import Config

_T = "type.googleapis.com/envoy."
Mode = Literal["ext_proc", "ext_authz"]
MODES: tuple[Mode, ...] = ("ext_proc", "ext_authz")
EXTPROC_CLUSTER = "extproc"
UPSTREAM_CLUSTER = "llm_upstream"
VERDICT_HEADERS = ("x-llmtrace-trace-id", "x-llmtrace-flagged", "x-llmtrace-findings")
# Envoy adds framing around the body it sends us; keep its gRPC cap above the body cap.
_GRPC_FRAME_SLACK = 64 * 1024
# LLM answers can take minutes; Envoy's 15 s default route timeout would cut them off.
_ROUTE_TIMEOUT = "600s"

# Envoy's own local replies (payload too large, ext_proc unreachable) become JSON in the
# client's dialect. ext_proc's ImmediateResponses are local replies too, so the mappers
# match only on Envoy's own response code details and leave our bodies alone.
_ENVOY_REPLY_DETAILS = {
    413: ("request_payload_too_large", "Request body is larger than the configured limit."),
}


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g}s"


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def grpc_ports(config: Config) -> list[int]:
    """The ports extproc worker processes listen on."""
    first = config.server.grpc_port
    return list(range(first, first + config.server.workers))


def _extproc_cluster(config: Config, ports: Sequence[int]) -> dict[str, Any]:
    return {
        "name": EXTPROC_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        # One endpoint per worker process: Envoy balances streams across endpoints.
        "lb_policy": "LEAST_REQUEST",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": EXTPROC_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket(config.server.grpc_host, port)}}
                        for port in ports
                    ]
                }
            ],
        },
    }


def _upstream_cluster(config: Config) -> dict[str, Any]:
    url = urlsplit(config.envoy.upstream_url)
    host = url.hostname or "127.0.0.1"
    tls = url.scheme == "https"
    port = url.port or (443 if tls else 80)
    cluster: dict[str, Any] = {
        "name": UPSTREAM_CLUSTER,
        "type": "STATIC" if _is_ip(host) else "LOGICAL_DNS",
        "connect_timeout": "5s",
        "per_connection_buffer_limit_bytes": _buffer_limit(config),
        "load_assignment": {
            "cluster_name": UPSTREAM_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(host, port)}}]}],
        },
    }
    if not _is_ip(host):
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
            },
        }
    return cluster


def _buffer_limit(config: Config) -> int:
    return max(config.server.max_request_size_bytes, config.server.max_response_size_bytes)


def _ext_proc_filter(config: Config) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _T + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {
                    "cluster_name": EXTPROC_CLUSTER,
                    "max_receive_message_length": _buffer_limit(config) + _GRPC_FRAME_SLACK,
                },
                "timeout": _seconds(config.envoy_message_timeout_ms),
            },
            "failure_mode_allow": config.server.failure_mode == "open",
            # The peer address comes from Envoy, not from a header a client could forge.
            "request_attributes": ["source.address"],
            "allow_mode_override": True,
            "message_timeout": _seconds(config.envoy_message_timeout_ms),
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
        },
    }


def _ext_authz_filter(config: Config) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": _T + "extensions.filters.http.ext_authz.v3.ExtAuthz",
            # The same gRPC server (and cluster) serves ext_proc and ext_authz. The timeout
            # covers the whole Check, body analysis included; Envoy's default is 200 ms.
            "grpc_service": {
                "envoy_grpc": {"cluster_name": EXTPROC_CLUSTER},
                "timeout": _seconds(config.envoy_message_timeout_ms),
            },
            "transport_api_version": "V3",
            "failure_mode_allow": config.server.failure_mode == "open",
            # Envoy's default for an unreachable server is 403, which reads as "policy said
            # no"; 500 matches the ext_proc variant (and its local-reply JSON mapper).
            "status_on_error": {"code": 500},
            # A body over the cap is Envoy's own 413, never a partial (unscanned) body.
            # pack_as_bytes: the exact bytes (raw_body), not a UTF-8 string copy.
            "with_request_body": {
                "max_request_bytes": config.server.max_request_size_bytes,
                "allow_partial_message": False,
                "pack_as_bytes": True,
            },
            "include_peer_certificate": False,
        },
    }


def _error_json(dialect: str, status: int, message: str) -> dict[str, Any]:
    if dialect == "anthropic":
        kind = "request_too_large" if status == 413 else "api_error"
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind = "invalid_request_error" if status < 500 else "server_error"
    code = "request_too_large" if status == 413 else "extproc_unavailable"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _local_reply_config(mode: Mode) -> dict[str, Any]:
    mappers = []
    if mode == "ext_authz":
        # Envoy's detail when the Check call fails and failure_mode_allow is off; our own
        # denials carry `ext_authz_denied` and keep their bodies.
        failed = "response.code_details == 'ext_authz_error'"
    else:
        fail_details = "ext_proc_error_gRPC_error_"
        failed = (
            f"response.code_details.startsWith('{fail_details}') || "
            "response.code_details.startsWith('ext_proc_error')"
        )
    cases = [
        (
            413,
            f"response.code_details == '{_ENVOY_REPLY_DETAILS[413][0]}'",
            _ENVOY_REPLY_DETAILS[413][1],
        ),
        (500, failed, "Security analysis is unavailable; request refused (fail-closed)."),
    ]
    for status, condition, message in cases:
        for dialect, path_regex in (
            ("anthropic", "^(/[^?]*)?/v1/(messages|complete)"),
            ("openai", None),
        ):
            expr = f"response.code == {status} && ({condition})"
            if path_regex is not None:
                expr += f" && request.path.matches('{path_regex}')"
            mappers.append(
                {
                    "filter": {
                        "extension_filter": {
                            "name": "envoy.access_loggers.extension_filters.cel",
                            "typed_config": {
                                "@type": _T
                                + "extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                                "expression": expr,
                            },
                        }
                    },
                    "body_format_override": {
                        "json_format": _error_json(dialect, status, message),
                        "content_type": "application/json",
                    },
                }
            )
    return {"mappers": mappers}


def render(
    config: Config,
    *,
    extproc_ports: Sequence[int] | None = None,
    ext_proc: bool = True,
    mode: Mode = "ext_proc",
) -> dict[str, Any]:
    """The Envoy bootstrap (as a dict) for this extproc configuration.

    `mode` picks the filter that calls extproc: ext_proc, or ext_authz (a Check before the
    upstream, no response checks). `ext_proc=False` leaves any filter out: plain Envoy, the
    baseline the benchmark compares to.
    """
    if mode not in MODES:
        raise ValueError(f"unknown Envoy mode {mode!r}; expected one of {', '.join(MODES)}")
    ports = list(extproc_ports) if extproc_ports is not None else grpc_ports(config)
    upstream = urlsplit(config.envoy.upstream_url)
    route: dict[str, Any] = {"cluster": UPSTREAM_CLUSTER, "timeout": _ROUTE_TIMEOUT}
    # extproc writes these on the upstream request; Envoy copies them to the client's
    # response, which saves a gRPC message whenever the response needs no checking.
    copy_headers = [
        {
            "header": {"key": name, "value": f"%REQ({name})%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
        for name in VERDICT_HEADERS
    ]
    if upstream.scheme == "https" and upstream.hostname:
        route["host_rewrite_literal"] = upstream.hostname
    filter_for_mode = {"ext_proc": _ext_proc_filter, "ext_authz": _ext_authz_filter}
    hcm = {
        "@type": _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "llm_ingress",
        "codec_type": "AUTO",
        # extproc picks the dialect from the path; normalise it first (RFC 3986 dot
        # segments, duplicate slashes, %2F) so extproc sees the path the upstream will.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD",
        "route_config": {
            "name": "llm_routes",
            "virtual_hosts": [
                {
                    "name": "llm",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": route}],
                    "response_headers_to_add": copy_headers,
                }
            ],
        },
        "local_reply_config": _local_reply_config(mode),
        "http_filters": [
            *([filter_for_mode[mode](config)] if ext_proc else []),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "admin": {"address": _socket("127.0.0.1", config.envoy.admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "llm_ingress",
                    "address": _socket(config.envoy.listen_host, config.envoy.listen_port),
                    "per_connection_buffer_limit_bytes": _buffer_limit(config),
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
            "clusters": [
                *([_extproc_cluster(config, ports)] if ext_proc else []),
                _upstream_cluster(config),
            ],
        },
    }


def render_yaml(
    config: Config, *, extproc_ports: Sequence[int] | None = None, mode: Mode = "ext_proc"
) -> str:
    """`render` as YAML text with a header saying where it came from."""
    command = "extproc envoy render" + ("" if mode == "ext_proc" else f" --mode {mode}")
    header = (
        f"# Rendered by `{command}` from extproc's configuration.\n"
        f"# Envoy → {mode} (extproc) → LLM upstream. Edit extproc's config, not this file.\n"
    )
    body = yaml.safe_dump(render(config, extproc_ports=extproc_ports, mode=mode), sort_keys=False)
    return header + body
