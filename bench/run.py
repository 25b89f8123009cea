"""Envoy alone vs Envoy + extproc, side by side in one run, on the same mock upstream.

    python bench/run.py [--duration 10] [--rounds 2] [--workers 1] [--json out.json]

Loopback only, bounded in time. Needs `wrk` (installed with apt-get if missing). The mock
upstream is a third Envoy answering a canned chat completion with `direct_response`, so the
upstream costs the same (and little) in both configurations.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from extproc.config import Config, dump_config, load_config, parse_settings
from extproc.envoy_config import render
from extproc.stack import envoy_binary

CHAT_TEXT = (
    "I'm planning a three-day trip to Lisbon in late spring with my partner. We enjoy food, "
    "architecture and walking rather than museums. Could you suggest an itinerary that groups "
    "neighbourhoods sensibly so we are not crossing the city several times a day, recommend a "
    "couple of traditional restaurants for dinner, and tell us whether the tram 28 is worth the "
    "queue or whether we should walk instead? We are staying near Rossio. Also, what is a "
    "reasonable day trip if the weather turns bad, and how early should we book it? Please keep "
    "the answer concise, in bullet points, and mention rough prices in euros where you can. "
    "Finally, list three phrases in Portuguese that would be polite to know in restaurants."
)
UPSTREAM_REPLY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Day 1: Alfama and Baixa. " * 8},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 250, "completion_tokens": 60, "total_tokens": 310},
    }
)


def chat_body() -> str:
    """A ~1 KB benign chat request (benign, so the full path incl. the response is measured)."""
    body = json.dumps(
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are a travel guide."},
                {"role": "user", "content": CHAT_TEXT},
            ],
        }
    )
    return body


def free_port() -> int:
    """A currently free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_port_block(count: int) -> int:
    """First of `count` consecutive free loopback ports (worker i listens on first+i).

    Searched below the ephemeral range: after a load run, the neighbours of an ephemeral
    port are often held in TIME_WAIT by closed client connections.
    """
    for _ in range(100):
        first = random.randrange(20000, 30000)
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no block of {count} free ports")


def wait_http(url: str, expect: bytes = b"", timeout: float = 30) -> None:
    """Poll a URL until it answers 200 (and contains `expect`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200 and expect in r.read():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def mock_upstream_config(port: int, admin: int) -> dict[str, Any]:
    """An Envoy that answers every request with a canned chat completion."""
    t = "type.googleapis.com/envoy."
    hcm = {
        "@type": t + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "mock",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "mock",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {
                                "status": 200,
                                "body": {"inline_string": UPSTREAM_REPLY},
                            },
                        }
                    ],
                    "response_headers_to_add": [
                        {"header": {"key": "content-type", "value": "application/json"}}
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": t + "extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "mock",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
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
            ]
        },
    }


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a child for the duration of a block, its output to `log`."""
    # The config file is complete; stray EXTPROC_* variables must not change it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def envoy(config: dict[str, Any], work: Path, name: str, concurrency: int) -> list[str]:
    """argv for an Envoy running `config`."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return [
        envoy_binary(),
        "-c",
        str(path),
        "--concurrency",
        str(concurrency),
        "--log-level",
        "error",
        "--use-dynamic-base-id",
    ]


@dataclass
class Result:
    """One wrk run."""

    label: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency(text: str, pct: str) -> float:
    match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if match is None:
        raise RuntimeError(f"no {pct}% latency in wrk output:\n{text}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, script: Path, connections: int, duration: int, label: str) -> Result:
    """Run wrk once and parse RPS, p50, p99 and non-2xx responses."""
    threads = min(connections, 2)
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{duration}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    return Result(label, connections, rps, _latency(out, "50"), _latency(out, "99"), errors)


def ensure_wrk() -> None:
    """Install wrk from Debian's packages if it is missing."""
    if shutil.which("wrk"):
        return
    print("installing wrk (apt-get)...", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)


def scrape(admin_url: str) -> dict[str, float]:
    """extproc's metrics as {series: value}."""
    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def messages_per_request(before: dict[str, float], after: dict[str, float]) -> float:
    """ext_proc gRPC messages per HTTP request, from the phase histograms."""

    def total(m: dict[str, float], prefix: str) -> float:
        return sum(v for k, v in m.items() if k.startswith(prefix))

    msgs = total(after, "extproc_phase_duration_seconds_count") - total(
        before, "extproc_phase_duration_seconds_count"
    )
    reqs = total(after, "extproc_requests_total") - total(before, "extproc_requests_total")
    return msgs / reqs if reqs else 0.0


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print a table (and optionally JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians (2)")
    parser.add_argument("--workers", type=int, default=1, help="extproc server processes (1)")
    parser.add_argument("--connections", default="1,16", help="wrk connection counts (1,16)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="extra extproc setting for the run, e.g. --set enable_security_analysis=false",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 60 or not 1 <= args.rounds <= 5:
        parser.error("--duration must be 1..60 and --rounds 1..5 (bounded load)")
    ensure_wrk()
    conns = [int(c) for c in args.connections.split(",")]
    with tempfile.TemporaryDirectory(prefix="extproc-bench-") as tmp:
        work = Path(tmp)
        results, msgs = _bench(work, conns, args)
    _report(results, msgs, args)
    return 0


def _bench(work: Path, conns: list[int], args: argparse.Namespace) -> tuple[list[Result], float]:
    up_port, up_admin = free_port(), free_port()
    alone_port, alone_admin = free_port(), free_port()
    settings = {
        "envoy.upstream_url": f"http://127.0.0.1:{up_port}",
        "envoy.listen_port": free_port(),
        "envoy.admin_port": free_port(),
        "server.grpc_port": free_port_block(args.workers),
        "server.admin_port": free_port(),
        "server.workers": args.workers,
        "logging.level": "warning",
        "storage.database_path": str(work / "traces.db"),
        "storage.journal_dir": str(work / "journal"),
    }
    settings.update(parse_settings(args.sets))
    config: Config = load_config(environ={}, overrides=settings.items())
    noop_port = free_port()
    noop_cfg = config.model_copy(
        update={
            "envoy": config.envoy.model_copy(
                update={"listen_port": free_port(), "admin_port": free_port()}
            ),
            "server": config.server.model_copy(update={"grpc_port": noop_port, "workers": 1}),
        }
    )
    alone_cfg = config.model_copy(
        update={
            "envoy": config.envoy.model_copy(
                update={"listen_port": alone_port, "admin_port": alone_admin}
            )
        }
    )
    (work / "extproc.yaml").write_text(dump_config(config))
    script = work / "post.lua"
    body = chat_body()
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Authorization"] = "Bearer sk-bench"\n'
    )
    admin_url = f"http://127.0.0.1:{config.server.admin_port}"
    with (
        process(envoy(mock_upstream_config(up_port, up_admin), work, "mock", 1), work / "m.log"),
        process(envoy(render(alone_cfg, ext_proc=False), work, "alone", 2), work / "a.log"),
        process(envoy(render(config), work, "front", 2), work / "f.log"),
        process(envoy(render(noop_cfg), work, "noop", 2), work / "n.log"),
        process(
            [sys.executable, str(Path(__file__).with_name("noop_extproc.py")), str(noop_port)],
            work / "noop.log",
        ),
        process(
            [sys.executable, "-m", "extproc.cli", "serve", "--config", str(work / "extproc.yaml")],
            work / "x.log",
        ),
    ):
        for admin in (up_admin, alone_admin, config.envoy.admin_port, noop_cfg.envoy.admin_port):
            wait_http(f"http://127.0.0.1:{admin}/ready", b"LIVE")
        wait_http(admin_url + "/health")
        front = f"http://127.0.0.1:{config.envoy.listen_port}/v1/chat/completions"
        alone = f"http://127.0.0.1:{alone_port}/v1/chat/completions"
        noop = f"http://127.0.0.1:{noop_cfg.envoy.listen_port}/v1/chat/completions"
        for url in (front, alone, noop):  # warm up connections and caches
            run_wrk(url, script, 2, 1, "warmup")
        results: list[Result] = []
        before = scrape(admin_url)
        for _ in range(args.rounds):
            for c in conns:
                results.append(run_wrk(alone, script, c, args.duration, "envoy alone"))
                results.append(run_wrk(noop, script, c, args.duration, "envoy + no-op ext_proc"))
                results.append(run_wrk(front, script, c, args.duration, "envoy + extproc"))
        msgs = messages_per_request(before, scrape(admin_url))
    return results, msgs


def _median(results: list[Result], label: str, conns: int) -> Result:
    runs = [r for r in results if r.label == label and r.connections == conns]
    return Result(
        label,
        conns,
        statistics.median(r.rps for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        sum(r.errors for r in runs),
    )


def _report(results: list[Result], msgs: float, args: argparse.Namespace) -> None:
    conns = sorted({r.connections for r in results})
    print(
        f"# extproc bench — {time.strftime('%Y-%m-%d')} — {platform.node()} "
        f"({os.cpu_count()} cpus), {args.duration}s x {args.rounds} rounds, "
        f"workers={args.workers}, 1 KB chat body, settings: {args.sets or 'defaults'}"
    )
    print(f"ext_proc messages per request: {msgs:.2f}")
    print("| connections | config | RPS | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---|---|---|---|")
    summary: dict[str, Any] = {"messages_per_request": msgs, "runs": [asdict(r) for r in results]}
    for c in conns:
        a = _median(results, "envoy alone", c)
        n = _median(results, "envoy + no-op ext_proc", c)
        b = _median(results, "envoy + extproc", c)
        for r in (a, n, b):
            print(
                f"| {c} | {r.label} | {r.rps:.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.errors} |"
            )
        print(
            f"| {c} | **delta / ratio** | {b.rps / a.rps:.2f}x | +{b.p50_ms - a.p50_ms:.3f} | "
            f"+{b.p99_ms - a.p99_ms:.3f} | |"
        )
        print(
            f"| {c} | **extproc vs no-op** | {b.rps / n.rps:.2f}x | +{b.p50_ms - n.p50_ms:.3f} | "
            f"+{b.p99_ms - n.p99_ms:.3f} | |"
        )
        summary[f"c{c}"] = {
            "rps_ratio": b.rps / a.rps,
            "p50_delta_ms": b.p50_ms - a.p50_ms,
            "p99_delta_ms": b.p99_ms - a.p99_ms,
            "rps_ratio_vs_noop": b.rps / n.rps,
            "p50_delta_vs_noop_ms": b.p50_ms - n.p50_ms,
        }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(main())
