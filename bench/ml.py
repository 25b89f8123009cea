"""ML scenario: per-prompt latency at batch 1, and micro-batching throughput at 16 concurrent.

Run `python -m bench.ml [--models-dir DIR] [--seconds 5] [--threads 0]`. Everything runs in one
process on loopback-free CPU work; ratios (batched vs batch 1) are measured side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from extproc.config import DEFAULT_MODELS_DIR
from extproc.detect.batcher import MicroBatcher
from extproc.detect.ml import Detection, OnnxModel

SHORT = "Could you summarise the attached quarterly report and list the three main risks?"
LONG_SENTENCE = (
    "The committee reviewed the migration plan for the billing service, including rollback "
    "steps, data retention, on-call coverage and the customer notice schedule. "
)


def _long_text(model: OnnxModel, tokens: int = 500) -> str:
    text = LONG_SENTENCE
    while len(model.tokenizer.encode(text, add_special_tokens=False).ids) < tokens:
        text += LONG_SENTENCE
    return text


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 2),
    }


def batch_one(model: OnnxModel, text: str, seconds: float, max_runs: int = 200) -> dict[str, Any]:
    """Latency of one text per call."""
    model.predict([text])  # warm-up: first run allocates
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and len(samples) < max_runs:
        started = time.perf_counter()
        model.predict([text])
        samples.append(time.perf_counter() - started)
    tokens = len(model.tokenizer.encode(text, add_special_tokens=False).ids)
    return {"tokens": tokens, "runs": len(samples), **_percentiles(samples)}


async def _closed_loop(
    batcher: MicroBatcher[str, list[Detection]], text: str, clients: int, seconds: float
) -> tuple[int, list[float]]:
    done = 0
    samples: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await batcher.submit([text])
            samples.append(time.perf_counter() - started)
            done += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return done, samples


def throughput(
    model: OnnxModel, text: str, clients: int, seconds: float, max_batch: int
) -> dict[str, Any]:
    """Texts per second with `clients` concurrent callers through the micro-batcher."""
    batcher: MicroBatcher[str, list[Detection]] = MicroBatcher(
        model.name,
        lambda texts: model.predict(texts, max_batch=max_batch),
        max_batch=max_batch,
        max_wait_us=500,
    )
    try:
        started = time.perf_counter()
        done, samples = asyncio.run(_closed_loop(batcher, text, clients, seconds))
        elapsed = time.perf_counter() - started
    finally:
        batcher.close()
    return {
        "clients": clients,
        "max_batch": max_batch,
        "texts_per_s": round(done / elapsed, 1),
        **_percentiles(samples),
    }


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally save) the ML benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench.ml", description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR.expanduser())
    parser.add_argument("--models", default="nanoguard,minilm-attack-bank,rampart,toxicity")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        model = OnnxModel(args.models_dir / name, device=args.device, threads=args.threads)
        long_text = _long_text(model)
        entry: dict[str, Any] = {
            "providers": model.providers,
            "short": batch_one(model, SHORT, args.seconds),
            "long": batch_one(model, long_text, args.seconds),
            "batch1": throughput(model, SHORT, args.clients, args.seconds, max_batch=1),
            "batched": throughput(model, SHORT, args.clients, args.seconds, max_batch=16),
        }
        entry["batching_gain"] = round(
            entry["batched"]["texts_per_s"] / max(entry["batch1"]["texts_per_s"], 1e-9), 2
        )
        results[name] = entry
        print(
            f"{name:20s} short {entry['short']['p50_ms']:7.2f}/{entry['short']['p95_ms']:7.2f} ms"
            f" ({entry['short']['tokens']} tok)  long {entry['long']['p50_ms']:7.2f}/"
            f"{entry['long']['p95_ms']:7.2f} ms ({entry['long']['tokens']} tok)  "
            f"{args.clients} clients: batch1 {entry['batch1']['texts_per_s']:7.1f}/s  "
            f"batched {entry['batched']['texts_per_s']:7.1f}/s  x{entry['batching_gain']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
