"""Render the Envoy config of the compose stack from extproc's own configuration.

    python compose/render_envoy.py [--config compose/extproc.yaml] [--output FILE]

It is `extproc envoy render` with two changes for a compose network: extproc is reached by
its service name (a STRICT_DNS cluster, since `grpc_host` is the 0.0.0.0 bind address), and
Envoy's admin listens on 0.0.0.0 so Prometheus can scrape `/stats/prometheus`.

The `envoy-config` service runs this at start with the stack's environment, so UPSTREAM_URL
reaches Envoy. `compose/envoy.yaml` is its output for the default environment (the demo
upstream); tests/unit/deploy/test_compose.py fails when the two differ. Regenerate with:

    EXTPROC_STORAGE__POSTGRES_URL=postgresql://extproc@postgres/extproc \
    EXTPROC_AUTH__ADMIN_KEY=placeholder-admin-key \
        python compose/render_envoy.py --output compose/envoy.yaml

(Those two settings are required by compose/extproc.yaml and do not affect the render.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from extproc.config import Config, load_config
from extproc.envoy_config import EXTPROC_CLUSTER, grpc_ports, render

HERE = Path(__file__).resolve().parent
EXTPROC_SERVICE = "extproc"  # the compose service name Envoy resolves


def render_compose(config: Config, *, extproc_host: str = EXTPROC_SERVICE) -> dict[str, Any]:
    """`render(config)` adapted to a compose network."""
    bootstrap = render(config)
    bootstrap["admin"]["address"]["socket_address"]["address"] = "0.0.0.0"
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"] != EXTPROC_CLUSTER:
            continue
        cluster["type"] = "STRICT_DNS"
        cluster["dns_lookup_family"] = "V4_ONLY"
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
            {
                "endpoint": {
                    "address": {"socket_address": {"address": extproc_host, "port_value": p}}
                }
            }
            for p in grpc_ports(config)
        ]
    return bootstrap


def render_compose_yaml(config: Config) -> str:
    """`render_compose` as YAML with a header saying where it came from."""
    header = (
        "# Rendered by compose/render_envoy.py from compose/extproc.yaml (and the environment).\n"
        "# Envoy → ext_proc (extproc) → LLM upstream. Edit extproc's config, not this file.\n"
    )
    return header + yaml.safe_dump(render_compose(config), sort_keys=False)


def load(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """extproc's configuration as the container resolves it (file, then EXTPROC_*)."""
    return load_config(path, environ=environ)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="render_envoy.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=HERE / "extproc.yaml")
    parser.add_argument("--output", "-o", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    text = render_compose_yaml(load(args.config))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
