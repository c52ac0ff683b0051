"""The embedded engine as a local deployment: in the foreground, or detached in the background.

`up_local(topology, plan, ...)` / `down_local()` / `local_status_command()` are what
`nemodeploy up` / `down` / `status` call for a one-node loopback topology; `run_local(config,
...)` is the same from an EngineConfig (what `nemodeploy serve` uses).

A detached deployment is a `nemodeploy serve` child process in its own session, with a
state file `<cache>/deployments/<name>.json` (pid, endpoint, config, log path) and its
log next to it. Stopping checks that the pid still runs our serve command before
signalling it, so a recycled pid is never killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import httpx
import psutil

from nemodeploy.engine.config import EngineConfig
from nemodeploy.net import free_port
from nemodeploy.paths import cache_dir


def deployments_dir() -> Path:
    path = cache_dir() / "deployments"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class LocalDeployment:
    name: str
    pid: int
    host: str
    port: int
    model: str
    log: str
    config: str  # the EngineConfig JSON the child serves
    started: float

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def running(self) -> bool:
        """The pid is alive and is still our serve command (not a recycled pid)."""
        try:
            proc = psutil.Process(self.pid)
            return proc.status() != psutil.STATUS_ZOMBIE and self.config in " ".join(proc.cmdline())
        except psutil.Error:
            return False

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            return httpx.get(f"{self.endpoint}/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False


def state_file(name: str) -> Path:
    return deployments_dir() / f"{name}.json"


def serve_command(config_path: Path, host: str, port: int, api_key: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "nemodeploy.cli", "serve", "--config", str(config_path), "--host", host,
           "--port", str(port)]
    return cmd + (["--api-key", api_key] if api_key else [])


def start_detached(config: EngineConfig, name: str, host: str, port: int, api_key: str | None,
                   timeout: float = 300.0) -> LocalDeployment:
    """Start the server in the background; return once /health answers 200."""
    existing = load(name)
    if existing is not None and existing.running():
        raise RuntimeError(f"deployment '{name}' is already running (pid {existing.pid}, {existing.endpoint})")
    directory = deployments_dir()
    config_path = directory / f"{name}.config.json"
    config_path.write_text(json.dumps(config.to_dict(), indent=2))
    log_path = directory / f"{name}.log"
    with open(log_path, "ab") as log:
        # the API key reaches the child through its environment, not its command line
        env = {**os.environ, "NEMODEPLOY_API_KEY": api_key} if api_key else dict(os.environ)
        proc = subprocess.Popen(serve_command(config_path, host, port, None), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    dep = LocalDeployment(name, proc.pid, host, port, config.model, str(log_path), str(config_path), time.time())
    state_file(name).write_text(json.dumps(asdict(dep), indent=2))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            state_file(name).unlink(missing_ok=True)
            raise RuntimeError(f"the server exited with code {proc.returncode}; see {log_path}")
        if dep.healthy(timeout=1.0):
            return dep
        time.sleep(0.5)
    stop(dep)
    raise TimeoutError(f"the server did not become healthy in {timeout:.0f} s; see {log_path}")


def load(name: str) -> LocalDeployment | None:
    path = state_file(name)
    if not path.exists():
        return None
    return LocalDeployment(**json.loads(path.read_text()))


def list_deployments() -> list[LocalDeployment]:
    return [LocalDeployment(**json.loads(p.read_text())) for p in sorted(deployments_dir().glob("*.json"))
            if not p.name.endswith(".config.json")]


def stop(dep: LocalDeployment, timeout: float = 15.0) -> bool:
    """SIGTERM that process (SIGKILL after `timeout`), then forget it. False if it was not running."""
    was_running = dep.running()
    if was_running:
        proc = psutil.Process(dep.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    state_file(dep.name).unlink(missing_ok=True)
    Path(dep.config).unlink(missing_ok=True)
    return was_running


def curl_line(endpoint: str, model: str, api_key: str | None) -> str:
    auth = ' -H "Authorization: Bearer $NEMODEPLOY_API_KEY"' if api_key else ""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32})
    return f"curl {endpoint}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'"


def run_local(config: EngineConfig, host: str = "127.0.0.1", port: int | None = None, api_key: str | None = None,
              detach: bool = False, name: str | None = None) -> LocalDeployment | None:
    """Serve `config` on this machine. Foreground: blocks until Ctrl-C / SIGTERM. Detached:
    returns the deployment once /health is OK. `name` (default: the served model name) keys
    the state file."""
    from nemodeploy.engine import server

    model = config.served_model_name or Path(config.model).name
    name = name or model
    port = port or free_port(host)
    if detach:
        dep = start_detached(config, name, host, port, api_key)
        click.echo(f"{name}: serving {model} at {dep.endpoint}/v1 (pid {dep.pid}, log {dep.log}); "
                   "`nemodeploy down` stops it")
        click.echo(curl_line(dep.endpoint, model, api_key))
        return dep
    endpoint = f"http://{host}:{port}"

    def ready() -> None:
        click.echo(f"{name}: serving {model} at {endpoint}/v1 (Ctrl-C stops)")
        click.echo(curl_line(endpoint, model, api_key))

    server.run(config, host, port, api_key, on_ready=ready)
    return None


def up_local(topology, plan, host: str = "127.0.0.1", port: int | None = None, api_key: str | None = None,
             detach: bool = False) -> LocalDeployment | None:
    """`nemodeploy up` for a one-node loopback topology: its plan's EngineConfig, served here."""
    from nemodeploy.backends.engine_config import engine_config

    return run_local(engine_config(topology, plan), host, port, api_key, detach, name=topology.name)


def down_local(name: str | None = None) -> list[str]:
    """Stop the named detached deployment (or the only one); return the names stopped."""
    deps = list_deployments()
    if name is not None:
        deps = [d for d in deps if d.name == name]
        if not deps:
            raise click.ClickException(f"no local deployment named '{name}'")
    elif len(deps) > 1:
        raise click.ClickException("several local deployments run; name one of: " + ", ".join(d.name for d in deps))
    elif not deps:
        click.echo("no local deployment is running")
    for dep in deps:
        click.echo(f"{dep.name}: {'stopped' if stop(dep) else 'was not running'} (pid {dep.pid})")
    return [d.name for d in deps]


def local_status() -> list[dict]:
    """One row per detached deployment: name, pid, endpoint, model, running, healthy, log."""
    rows = []
    for d in list_deployments():
        running = d.running()
        rows.append({"name": d.name, "pid": d.pid, "endpoint": d.endpoint, "model": d.model, "running": running,
                     "healthy": running and d.healthy(), "log": d.log})
    return rows


def local_status_command(as_json: bool = False) -> None:
    rows = local_status()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no local deployments")
    for r in rows:
        state = "healthy" if r["healthy"] else "running, not healthy" if r["running"] else "not running"
        click.echo(f"{r['name']}: {state}, pid {r['pid']}, {r['endpoint']}/v1, model {r['model']}, log {r['log']}")
