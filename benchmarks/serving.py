"""What the serving benchmarks share: a `nemodeploy serve` on loopback, and its /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from nemodeploy.engine.config import EngineConfig


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus samples by name (the unlabelled-by-reason ones)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if "finished_reason" not in s.labels}


def start_server(config: EngineConfig, port: int, workdir: Path) -> subprocess.Popen:
    """The server on 127.0.0.1:port, returned once /health answers 200 (its log: workdir/server.log)."""
    config_path = workdir / "engine.json"
    config_path.write_text(json.dumps(config.to_dict()))
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "nemodeploy.cli", "serve", "--config", str(config_path),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(workdir / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise TimeoutError("server did not become healthy")
