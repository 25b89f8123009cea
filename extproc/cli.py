"""Command line: `extproc serve | up | validate | envoy render | config reference`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extproc import __version__
from extproc.config import (
    Config,
    ConfigError,
    dump_config,
    load_config,
    mask_url,
    parse_settings,
)
from extproc.detect.errors import RulePackError
from extproc.models.manifest import ModelError

# CLI flags that are shortcuts for config paths; `--set PATH=VALUE` reaches the rest.
_FLAG_PATHS = {
    "upstream": "envoy.upstream_url",
    "envoy_port": "envoy.listen_port",
    "envoy_admin_port": "envoy.admin_port",
    "grpc_port": "server.grpc_port",
    "admin_port": "server.admin_port",
    "failure_mode": "server.failure_mode",
}


def _add_config_args(parser: argparse.ArgumentParser, *flags: str) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=os.environ.get("EXTPROC_CONFIG"),
        help="YAML config file (default: $EXTPROC_CONFIG; none: built-in defaults)",
    )
    parser.add_argument(
        "--runtime-config",
        type=Path,
        default=os.environ.get("EXTPROC_RUNTIME_CONFIG"),
        help="feature-flag overlay written by the admin API (default: $EXTPROC_RUNTIME_CONFIG, "
        "else config.runtime.yaml beside --config; none: flags kept in memory)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override one setting, e.g. --set pii.action=alert_and_redact (repeatable)",
    )
    helps = {
        "upstream": "LLM upstream URL (default: start the demo upstream)",
        "envoy_port": "Envoy listener port (default 10000)",
        "envoy_admin_port": "Envoy admin port (default 9901)",
        "grpc_port": "ext_proc gRPC port (default 50051)",
        "admin_port": "extproc admin HTTP port (default 8081)",
        "failure_mode": "open: pass traffic when extproc fails; closed: refuse it",
    }
    for flag in flags:
        kind: Any = str if flag in ("upstream", "failure_mode") else int
        parser.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind, help=helps[flag])


def _overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    out = parse_settings(args.sets)
    for flag, path in _FLAG_PATHS.items():
        value = getattr(args, flag, None)
        if value is not None:
            out.append((path, value))
    return out


def _resolve(args: argparse.Namespace) -> Config:
    return load_config(
        args.config, overrides=_overrides(args), runtime_overlay=_runtime_overlay(args)
    )


def _runtime_overlay(args: argparse.Namespace) -> Path | None:
    from extproc.features import default_overlay_path

    explicit = getattr(args, "runtime_config", None)
    if explicit is not None:
        return Path(explicit)
    return default_overlay_path(Path(args.config) if args.config else None)


def _setup_logging(config: Config) -> None:
    fmt = (
        '{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}'
        if config.logging.format == "json"
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=config.logging.level.upper(), format=fmt, stream=sys.stderr)


def _cmd_validate(args: argparse.Namespace) -> int:
    config = _resolve(args)
    sys.stdout.write(dump_config(config, mask_secrets=True))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    config = _resolve(args)
    _setup_logging(config)
    if config.server.workers > 1 and args.worker_index is None:
        from extproc.server.workers import serve_workers

        return asyncio.run(serve_workers(config))
    from extproc.server.app import serve

    config_path = Path(args.config) if args.config else None
    asyncio.run(
        serve(
            config,
            worker_index=args.worker_index or 0,
            resolve=lambda: _resolve(args),
            config_path=config_path,
            runtime_overlay=_runtime_overlay(args),
        )
    )
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    config = _resolve(args)
    _setup_logging(config)
    from extproc.stack import run_stack

    demo_port = None
    if args.upstream is None:
        demo_port = args.demo_port
        config = config.model_copy(
            update={
                "envoy": config.envoy.model_copy(
                    update={"upstream_url": f"http://127.0.0.1:{demo_port}"}
                )
            }
        )
    return asyncio.run(run_stack(config, demo_port=demo_port))


def _cmd_migrate(args: argparse.Namespace) -> int:
    config = _resolve(args)
    settings = config.storage
    if settings.profile == "memory":
        print("storage.profile is memory: nothing to migrate")
        return 0
    from extproc.storage.factory import open_store

    forced = config.model_copy(
        update={"storage": settings.model_copy(update={"auto_migrate": True})}
    )
    store = open_store(forced)
    applied: list[str] = getattr(store, "applied", [])
    store.close()
    where = (
        mask_url(settings.postgres_url or "")
        if settings.profile == "production"
        else settings.database_path
    )
    print(f"{where}: applied {', '.join(applied)}" if applied else f"{where}: up to date")
    return 0


def _cmd_envoy_render(args: argparse.Namespace) -> int:
    from extproc.envoy_config import render_yaml

    text = render_yaml(_resolve(args), mode=args.mode)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


def _cmd_config_reference(args: argparse.Namespace) -> int:
    from extproc.config_reference import render_reference

    text = render_reference()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from extproc.models.install import main as models_main

    return models_main(args.rest)


def _cmd_eval(args: argparse.Namespace) -> int:
    from extproc.evaluation import main as eval_main

    return eval_main(args.rest)


_OWN_PARSERS = {"models": _cmd_models, "eval": _cmd_eval}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="extproc", description="LLM security for Envoy.")
    parser.add_argument("--version", action="version", version=f"extproc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ext_proc gRPC server and the admin HTTP API")
    _add_config_args(serve, "grpc_port", "admin_port", "failure_mode")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)

    up = sub.add_parser("up", help="run Envoy + extproc + a demo LLM upstream locally")
    _add_config_args(
        up, "upstream", "envoy_port", "envoy_admin_port", "grpc_port", "admin_port", "failure_mode"
    )
    up.add_argument("--demo-port", type=int, default=18080, help="demo upstream port (18080)")
    up.set_defaults(func=_cmd_up)

    validate = sub.add_parser("validate", help="print the resolved config, or every error")
    _add_config_args(validate)
    validate.set_defaults(func=_cmd_validate)

    migrate = sub.add_parser("migrate", help="apply pending storage schema migrations")
    _add_config_args(migrate)
    migrate.set_defaults(func=_cmd_migrate)

    envoy = sub.add_parser("envoy", help="Envoy configuration")
    envoy_sub = envoy.add_subparsers(dest="envoy_command", required=True)
    render = envoy_sub.add_parser("render", help="print the Envoy config matching this config")
    _add_config_args(
        render, "upstream", "envoy_port", "envoy_admin_port", "grpc_port", "failure_mode"
    )
    render.add_argument("--output", "-o", type=Path, help="write to a file instead of stdout")
    render.add_argument(
        "--mode",
        choices=("ext_proc", "ext_authz"),
        default="ext_proc",
        help="filter that calls extproc: ext_proc (default) or ext_authz (Check only)",
    )
    render.set_defaults(func=_cmd_envoy_render)

    config = sub.add_parser("config", help="configuration documentation")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    reference = config_sub.add_parser(
        "reference", help="print the Markdown reference of every setting (docs/reference.md)"
    )
    reference.add_argument("--output", "-o", type=Path, help="write to a file instead of stdout")
    reference.set_defaults(func=_cmd_config_reference)

    # These parse their own arguments (`extproc models --help`, `extproc eval --help`).
    models = sub.add_parser(
        "models", help="install (download, convert, verify) or list the ONNX models", add_help=False
    )
    models.add_argument("rest", nargs=argparse.REMAINDER)
    models.set_defaults(func=_cmd_models)
    evaluate = sub.add_parser(
        "eval",
        help="detection rate and false positives of regex, models and ensemble",
        add_help=False,
    )
    evaluate.add_argument("rest", nargs=argparse.REMAINDER)
    evaluate.set_defaults(func=_cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `extproc` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `models` and `eval` own their arguments: argparse's REMAINDER would refuse a leading flag.
    if argv and argv[0] in _OWN_PARSERS:
        args = argparse.Namespace(func=_OWN_PARSERS[argv[0]], rest=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        where = f" {args.config}" if getattr(args, "config", None) else ""
        print(f"extproc: invalid configuration{where}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    except RulePackError as exc:
        print(f"extproc: invalid rule pack: {exc}", file=sys.stderr)
        return 1
    except ModelError as exc:
        print(f"extproc: model: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"extproc: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
