"""Load test: N concurrent streaming clients against a `nemodeploy serve` it starts on loopback.

    python benchmarks/load_test.py [--clients 32] [--duration 30] [--model DIR]

The server runs the tiny model (unless --model) with a small queue, so some requests are
meant to get 429; clients back off briefly and retry until the deadline. Reports
requests OK, intended 429s, other errors (must be 0), tokens/s, TTFT and inter-token
latency percentiles, and whether every KV block and Mamba slot is free at the end.
Exit status 1 when other errors occur or the cache is not all free.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from serving import parse_metrics, start_server

from nemodeploy.engine.config import EngineConfig
from nemodeploy.net import free_port

WORDS = "the quick brown fox jumps over the lazy dog a hybrid model mixes state space layers with attention".split()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


class Tally:
    def __init__(self):
        self.ok = self.rejected = self.tokens = 0
        self.errors: list[str] = []
        self.ttft: list[float] = []
        self.itl: list[float] = []


async def client_loop(url: str, model: str, deadline: float, tally: Tally, rng: random.Random) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as http:
        while time.monotonic() < deadline:
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 60)))
            body = {"model": model, "prompt": prompt, "max_tokens": rng.randint(8, 48), "temperature": 0.8,
                    "stream": True, "ignore_eos": True}
            start = time.monotonic()
            try:
                async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
                    if r.status_code == 429:
                        tally.rejected += 1
                        await r.aread()
                        await asyncio.sleep(0.1 + 0.1 * rng.random())  # back off, as a client should
                        continue
                    if r.status_code != 200:
                        tally.errors.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                        continue
                    last, finished = None, False
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        now = time.monotonic()
                        choice = json.loads(line[6:])["choices"][0]
                        if choice["text"]:
                            if last is None:
                                tally.ttft.append(now - start)
                            else:
                                tally.itl.append(now - last)
                            last = now
                        finished = choice["finish_reason"] is not None
                    if not finished:
                        tally.errors.append("stream ended without a finish_reason")
                        continue
                    tally.ok += 1
            except httpx.HTTPError as exc:
                tally.errors.append(f"{type(exc).__name__}: {exc}")


async def run(url: str, model: str, clients: int, duration: float) -> tuple[Tally, float]:
    tally = Tally()
    started = time.monotonic()
    deadline = started + duration
    await asyncio.wait_for(
        asyncio.gather(*(client_loop(url, model, deadline, tally, random.Random(i)) for i in range(clients))),
        timeout=duration + 120,
    )
    return tally, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--model", default=None, help="checkpoint dir (default: the tiny model)")
    args = parser.parse_args()
    if args.model is None:
        from nemodeploy.engine.tiny import tiny_model_dir

        args.model = str(tiny_model_dir())
    config = EngineConfig(model=args.model, dtype="float32", block_size=16, num_kv_blocks=256, num_mamba_slots=8,
                          max_num_seqs=8, max_num_batched_tokens=256, max_model_len=512, max_queue=8,
                          served_model_name="load-test")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as work:
        proc = start_server(config, port, Path(work))
        try:
            tally, elapsed = asyncio.run(run(url, "load-test", args.clients, args.duration))
            m = {}
            for _ in range(100):  # aborted or finishing requests leave within a few steps
                m = parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)
                if m["nemodeploy:kv_blocks_free"] == m["nemodeploy:kv_blocks_total"] and \
                        m["nemodeploy:mamba_slots_free"] == m["nemodeploy:mamba_slots_total"]:
                    break
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(30)
    all_free = (m["nemodeploy:kv_blocks_free"] == m["nemodeploy:kv_blocks_total"]
                and m["nemodeploy:mamba_slots_free"] == m["nemodeploy:mamba_slots_total"])
    ms = 1000.0
    report = {
        "clients": args.clients, "duration_s": round(elapsed, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, no GPU"
        if config.device == "cpu" else config.device,
        "requests_ok": tally.ok, "intended_429": tally.rejected, "other_errors": len(tally.errors),
        "generated_tokens": int(m["vllm:generation_tokens_total"]),
        "tokens_per_s": round(m["vllm:generation_tokens_total"] / elapsed, 1),
        "ttft_ms_p50": round(percentile(tally.ttft, 50) * ms, 1),
        "ttft_ms_p99": round(percentile(tally.ttft, 99) * ms, 1),
        "itl_ms_p50": round(percentile(tally.itl, 50) * ms, 1),
        "itl_ms_p99": round(percentile(tally.itl, 99) * ms, 1),
        "itl_ms_mean": round(statistics.fmean(tally.itl) * ms, 1) if tally.itl else None,
        "kv_blocks_free_at_end": f"{int(m['nemodeploy:kv_blocks_free'])}/{int(m['nemodeploy:kv_blocks_total'])}",
        "mamba_slots_free_at_end": f"{int(m['nemodeploy:mamba_slots_free'])}/{int(m['nemodeploy:mamba_slots_total'])}",
    }
    print(json.dumps(report, indent=2))
    for error in tally.errors[:10]:
        print("error:", error, file=sys.stderr)
    return 0 if not tally.errors and all_free else 1


if __name__ == "__main__":
    sys.exit(main())
