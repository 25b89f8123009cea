"""SSE streaming cost: time to first token and added time per chunk, side by side in one run.

    python -m bench.sse [--requests 100] [--rounds 2] [--chunks 50] [--gap-ms 2]

Loopback only, bounded in count. An asyncio upstream streams `--chunks` OpenAI chat chunks,
`--gap-ms` apart (so Envoy forwards them as separate body messages, as it does for a real
model). A sequential client measures, per request, the time to the first body byte (TTFT)
and to the end of the stream, through: Envoy alone; Envoy + a no-op Python ext_proc that
echoes every chunk in FULL_DUPLEX_STREAMED (`bench/noop_extproc.py --duplex`); Envoy +
extproc with streaming analysis on. Configurations alternate; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.run import envoy, free_port, process, wait_http
from extproc.config import Config, dump_config, load_config
from extproc.envoy_config import render


def _chunk(i: int) -> bytes:
    data = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": f"token{i} "}, "finish_reason": None}],
    }
    event = b"data: " + json.dumps(data).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


async def serve_upstream(port: int, chunks: int, gap: float) -> asyncio.Server:
    """A minimal HTTP/1.1 SSE upstream (keep-alive, chunked)."""
    events = [_chunk(i) for i in range(chunks)]
    done = b"data: [DONE]\n\n"
    tail = b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                headers = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in headers.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                writer.write(head)
                for event in events:
                    writer.write(event)
                    await writer.drain()
                    await asyncio.sleep(gap)
                writer.write(tail)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()  # Envoy closed the connection, or the bench is over

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def one_request(host: str, port: int, body: bytes) -> tuple[float, float]:
    """TTFT and total seconds for one streamed request on a fresh connection."""
    reader, writer = await asyncio.open_connection(host, port)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )
    started = time.perf_counter()
    writer.write(request)
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    first: float | None = None
    while True:
        data = await reader.read(65536)
        if not data:
            break
        if first is None and b"data:" in data:
            first = time.perf_counter()
        if b"0\r\n\r\n" in data[-7:]:
            break
    total = time.perf_counter() - started
    writer.close()
    return (first or time.perf_counter()) - started, total


async def measure(port: int, requests: int) -> tuple[list[float], list[float]]:
    """Sequential streamed requests against one front."""
    body = json.dumps(
        {
            "model": "gpt-4o",
            "stream": True,
            "messages": [{"role": "user", "content": "Tell me a story."}],
        }
    ).encode()
    ttft, total = [], []
    for _ in range(requests):
        t, d = await one_request("127.0.0.1", port, body)
        ttft.append(t * 1000)
        total.append(d * 1000)
    return ttft, total


async def bench(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    up_port = free_port()
    upstream = await serve_upstream(up_port, args.chunks, args.gap_ms / 1000)
    settings = {
        "envoy.upstream_url": f"http://127.0.0.1:{up_port}",
        "server.grpc_port": free_port(),
        "server.admin_port": free_port(),
        "logging.level": "warning",
    }
    fronts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="extproc-bench-sse-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        settings["storage.database_path"] = str(work / "traces.db")
        settings["storage.journal_dir"] = str(work / "journal")
        config = load_config(environ={}, overrides=settings.items())
        noop_grpc = free_port()
        variants = {
            "envoy alone": (config, False),
            "envoy + no-op duplex ext_proc": (_with_grpc(config, noop_grpc), True),
            "envoy + extproc": (config, True),
        }
        for name, (cfg, with_ext_proc) in variants.items():
            port, admin = free_port(), free_port()
            cfg = cfg.model_copy(
                update={
                    "envoy": cfg.envoy.model_copy(update={"listen_port": port, "admin_port": admin})
                }
            )
            label = name.split()[-1].replace("+", "")
            stack.enter_context(
                process(
                    envoy(render(cfg, ext_proc=with_ext_proc), work, f"front-{label}", 2),
                    work / f"{label}.log",
                )
            )
            fronts[name] = port
            wait_http(f"http://127.0.0.1:{admin}/ready", b"LIVE")
        (work / "extproc.yaml").write_text(dump_config(config))
        stack.enter_context(
            process(
                [
                    sys.executable,
                    "-m",
                    "extproc.cli",
                    "serve",
                    "--config",
                    str(work / "extproc.yaml"),
                ],
                work / "x.log",
            )
        )
        stack.enter_context(
            process(
                [
                    sys.executable,
                    str(Path(__file__).with_name("noop_extproc.py")),
                    str(noop_grpc),
                    "--duplex",
                ],
                work / "noop.log",
            )
        )
        wait_http(f"http://127.0.0.1:{config.server.admin_port}/health")
        for port in fronts.values():
            await measure(port, 5)  # warm up
        samples: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in fronts}
        for _ in range(args.rounds):
            for name, port in fronts.items():
                ttft, total = await measure(port, args.requests)
                samples[name][0].extend(ttft)
                samples[name][1].extend(total)
    upstream.close()
    await upstream.wait_closed()
    return {
        name: {
            "ttft_p50": statistics.median(t),
            "ttft_p99": statistics.quantiles(t, n=100)[98],
            "total_p50": statistics.median(d),
        }
        for name, (t, d) in samples.items()
    }


def _with_grpc(config: Config, port: int) -> Config:
    return config.model_copy(
        update={"server": config.server.model_copy(update={"grpc_port": port, "workers": 1})}
    )


def main() -> int:
    """Run and print a table."""
    parser = argparse.ArgumentParser(description="SSE streaming cost of extproc")
    parser.add_argument("--requests", type=int, default=100, help="per front per round (100)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    args = parser.parse_args()
    if not (1 <= args.requests <= 1000 and 1 <= args.rounds <= 5 and 1 <= args.chunks <= 500):
        parser.error("bounded load: --requests 1..1000, --rounds 1..5, --chunks 1..500")
    results = asyncio.run(bench(args))
    base = results["envoy alone"]
    print(
        f"# extproc SSE bench — {time.strftime('%Y-%m-%d')} — {platform.node()} "
        f"({os.cpu_count()} cpus), {args.chunks} chunks {args.gap_ms} ms apart, "
        f"{args.requests}x{args.rounds} sequential requests"
    )
    print("| config | TTFT p50 ms | TTFT p99 ms | stream p50 ms | TTFT added | per chunk added |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        added = r["ttft_p50"] - base["ttft_p50"]
        per_chunk = (r["total_p50"] - base["total_p50"]) / args.chunks
        print(
            f"| {name} | {r['ttft_p50']:.3f} | {r['ttft_p99']:.3f} | {r['total_p50']:.2f} | "
            f"+{added:.3f} | +{per_chunk:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
