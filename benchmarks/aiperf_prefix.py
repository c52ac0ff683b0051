"""Prefix caching under NVIDIA AIPerf: an agent-like workload (a long shared system prompt, short
new turns) against `nemodeploy serve`, with prefix caching off and on, in one run.

    python benchmarks/aiperf_prefix.py [--aiperf PATH] [--system-tokens 1536] [--requests 16]

AIPerf (pip install aiperf; it pins its own dependencies, so a separate venv is simplest) sends
streaming chat requests built from the tiny model's tokenizer; this prints its TTFT and request
latency for both runs, their ratio, and the server's prefix-cache hit rate from /metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from serving import parse_metrics, start_server

from nemodeploy.engine.config import EngineConfig
from nemodeploy.net import free_port


def profile(aiperf: str, url: str, model_dir: str, args, out: Path) -> dict:
    cmd = [aiperf, "profile", "--model", "tiny", "--url", url, "--endpoint-type", "chat", "--streaming",
           "--tokenizer", model_dir, "--shared-system-prompt-length", str(args.system_tokens),
           "--prompt-input-tokens-mean", str(args.turn_tokens), "--prompt-input-tokens-stddev", "0",
           "--prompt-output-tokens-mean", "8", "--prompt-output-tokens-stddev", "0",
           "--extra-inputs", "ignore_eos:true", "--concurrency", str(args.concurrency),
           "--request-count", str(args.requests), "--warmup-request-count", "1", "--random-seed", "1",
           "--output-artifact-dir", str(out), "--ui-type", "none"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=900)
    return json.loads((out / "profile_export_aiperf.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aiperf", default=shutil.which("aiperf") or "aiperf", help="the aiperf executable")
    parser.add_argument("--system-tokens", type=int, default=1536)
    parser.add_argument("--turn-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    from nemodeploy.engine.tiny import tiny_model_dir

    model_dir = str(tiny_model_dir())
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for caching in (False, True):
            config = EngineConfig(model=model_dir, dtype="float32", block_size=16, num_kv_blocks=1024, num_mamba_slots=8,
                                  max_num_seqs=8, max_num_batched_tokens=2048, max_model_len=4096,
                                  served_model_name="tiny", prefix_caching=caching, mamba_checkpoint_interval=256)
            port, folder = free_port(), Path(work) / ("on" if caching else "off")
            folder.mkdir()
            proc = start_server(config, port, folder)
            try:
                result = profile(args.aiperf, f"http://127.0.0.1:{port}", model_dir, args, folder / "aiperf")
                metrics = parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
            finally:
                proc.terminate()
                proc.wait(30)
            rows["on" if caching else "off"] = {
                "ttft_ms_avg": round(result["time_to_first_token"]["avg"], 1),
                "ttft_ms_p50": round(result["time_to_first_token"]["p50"], 1),
                "request_latency_ms_avg": round(result["request_latency"]["avg"], 1),
                "input_tokens_avg": round(result["input_sequence_length"]["avg"]),
                "prefix_cache_hit_rate": round(metrics.get("nemodeploy:prefix_cache_hit_rate", 0.0), 3),
            }
    report = {
        "workload": f"{args.requests} chat requests, {args.system_tokens}-token shared system prompt, "
                    f"{args.turn_tokens}-token turns, 8 output tokens, concurrency {args.concurrency}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, no GPU",
        "caching_off": rows["off"], "caching_on": rows["on"],
        "ttft_on_over_off": round(rows["on"]["ttft_ms_avg"] / rows["off"]["ttft_ms_avg"], 3),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
