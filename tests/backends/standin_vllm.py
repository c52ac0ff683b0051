"""STAND-IN for the `vllm` executable on the test hosts (no GPU and no vLLM can run here).

It is what `nemodeploy up` starts instead of vLLM 0.33 (through NEMODEPLOY_VLLM): `--version`
prints 0.33.0; `serve MODEL ...` records its argv, its environment and, under the Ray executor,
the Ray nodes alive (with their GPUs) at the moment it started, into standin.json in its working
directory; then it logs start-up lines in vLLM's words and serves GET /health (200) on
--host/--port, or with --headless just stays up. Options before `serve`, for the tests:
  --fail             log a load error and exit 1 instead of serving
  --fail-headless    the same, on the headless ranks only
  --version-is V     report vLLM V
  --slow S           wait S seconds before serving /health
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import sys
import time


def _log(text: str) -> None:
    print(f"INFO {time.strftime('%m-%d %H:%M:%S')} [standin] {text}", flush=True)


def _ray_nodes(address: str) -> list[dict]:
    from ray._raylet import GcsClient

    infos = GcsClient(address=address).get_all_node_info(timeout=10).values()
    return [{"ip": i.node_manager_address, "alive": i.state == 0, "gpus": dict(i.resources_total).get("GPU", 0.0)}
            for i in infos]


def _option(argv: list[str], name: str, default: str | None = None) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else default


def serve(argv: list[str], fail: bool, slow: float) -> int:
    record = {"argv": argv, "pid": os.getpid(), "started": time.time(), "hostname": socket.gethostname(),
              "env": {k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "GLOO_", "VLLM_", "RAY_"))}}
    if _option(argv, "--distributed-executor-backend") == "ray":
        record["ray_nodes"] = _ray_nodes(os.environ["RAY_ADDRESS"])
    with open("standin.json", "w") as f:
        json.dump(record, f)
    _log(f"vLLM API server version 0.33.0 (stand-in) args: {' '.join(argv)}")
    _log("Loading weights took 0.12 seconds")
    if fail:
        print("ERROR [standin] RuntimeError: CUDA error: out of memory (stand-in failure)", flush=True)
        return 1
    _log("Available KV cache memory: 61.3 GiB")
    _log("Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%")
    if "--headless" in argv:
        _log("headless: serving the engine to the head")
        while True:
            time.sleep(3600)
    time.sleep(slow)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((_option(argv, "--host", "0.0.0.0"), int(_option(argv, "--port", "8000"))),
                                             Health)
    _log(f"Starting vLLM API server 0 on http://{server.server_address[0]}:{server.server_address[1]}")
    print("INFO:     Application startup complete.", flush=True)
    server.serve_forever()
    return 0


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fail, version, slow = False, "0.33.0", 0.0
    while argv and argv[0] in ("--fail", "--fail-headless", "--version-is", "--slow"):
        option = argv.pop(0)
        if option == "--fail":
            fail = True
        elif option == "--fail-headless":
            fail = "--headless" in argv
        elif option == "--version-is":
            version = argv.pop(0)
        else:
            slow = float(argv.pop(0))
    if argv == ["--version"]:
        print(version)
        return 0
    if argv[:1] == ["serve"]:
        return serve(argv[1:], fail, slow)
    print(f"stand-in vllm: unsupported arguments {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
