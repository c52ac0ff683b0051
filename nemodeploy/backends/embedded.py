"""The embedded engine as a local deployment: in the foreground, or detached in the background.

`up_local(topology, plan, ...)` / `down_local()` / `local_status_command()` are what
`nemodeploy up` / `down` / `status` call for a one-node loopback topology; `run_local(config,
...)` is the same from an EngineConfig (what `nemodeploy serve` uses).

A deployment, detached (a `nemodeploy serve` child process in its own session) or in the
foreground (this process), has a state file `<cache>/deployments/<name>.json` (pid and its
start time, endpoint, config, log path), so `status` and `down` see both. Stopping checks
that the pid is still that process before signalling it, so a recycled pid is never killed.

What can go wrong before serving (the name already runs, the port is taken, the folder is no
checkpoint, the child exits) is a LocalError: one line for the CLI, with its exit code.
"""

from __future__ import annotations

import ipaddress
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

from nemodeploy.cluster import secrets as cluster_secrets
from nemodeploy.engine.config import EngineConfig
from nemodeploy.net import free_port
from nemodeploy.paths import cache_dir


class LocalError(RuntimeError):
    """A local deployment that cannot start or stop; `str()` is the one-line reason."""

    exit_code = 1  # a runtime failure (the CLI's EXIT_FAILED)


class NotACheckpoint(LocalError):
    exit_code = 2  # bad input: the folder given is no checkpoint


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
    config: str  # the EngineConfig JSON it serves
    started: float
    process_started: float | None = None  # the pid's create time: a recycled pid has another

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def running(self) -> bool:
        """The pid is alive and is still that process (not a recycled pid)."""
        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            if self.process_started is not None:
                return abs(proc.create_time() - self.process_started) < 0.01
            return self.config in " ".join(proc.cmdline())
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


def _not_running(name: str) -> None:
    existing = load(name)
    if existing is not None and existing.running():
        raise LocalError(f"{name}: already running (pid {existing.pid}, {existing.endpoint}/v1); "
                         f"`nemodeploy down {name}` stops it")


def _listen(host: str, port: int):
    from nemodeploy.engine.server import listen

    try:
        return listen(host, port)
    except OSError as err:
        raise LocalError(f"cannot serve on {host}:{port}: {err.strerror or err}"
                         + ("; another process listens there (--port picks another)" if port else "")) from None


def checkpoint_problem(model_dir: str | Path) -> str | None:
    """Why `model_dir` cannot be served, or None: what the engine reads first, checked up front."""
    directory = Path(model_dir)
    if not directory.is_dir():
        return f"{directory}: not a directory" if directory.exists() else f"{directory}: no such directory"
    config = directory / "config.json"
    try:
        json.loads(config.read_text())
    except (OSError, ValueError) as err:
        return f"{directory}: not a Hugging Face checkpoint (config.json: {getattr(err, 'strerror', None) or err})"
    if not any(directory.glob("*.safetensors")):
        return f"{directory}: no *.safetensors weights"
    if not any((directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return f"{directory}: no tokenizer (tokenizer.json or tokenizer_config.json)"
    return None


def _write_config(config: EngineConfig, name: str) -> Path:
    path = deployments_dir() / f"{name}.config.json"
    path.write_text(json.dumps(config.to_dict(), indent=2))
    return path


def start_detached(config: EngineConfig, name: str, host: str, port: int, api_key: str | None,
                   timeout: float = 300.0) -> LocalDeployment:
    """Start the server in the background; return once /health answers 200."""
    _not_running(name)
    _listen(host, port).close()  # taken now: say so, instead of finding someone else's /health
    directory = deployments_dir()
    config_path = _write_config(config, name)
    log_path = directory / f"{name}.log"
    with open(log_path, "ab") as log:
        # the API key reaches the child through its environment, not its command line
        env = {**os.environ, "NEMODEPLOY_API_KEY": api_key} if api_key else dict(os.environ)
        proc = subprocess.Popen(serve_command(config_path, host, port, None), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    dep = LocalDeployment(name, proc.pid, host, port, config.model, str(log_path), str(config_path), time.time(),
                          psutil.Process(proc.pid).create_time())
    state_file(name).write_text(json.dumps(asdict(dep), indent=2))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            state_file(name).unlink(missing_ok=True)
            config_path.unlink(missing_ok=True)
            raise LocalError(f"{name}: the server exited with code {proc.returncode}; see {log_path}")
        if dep.healthy(timeout=1.0) and proc.poll() is None:
            return dep
        time.sleep(0.5)
    stop(dep)
    raise LocalError(f"{name}: the server did not become healthy in {timeout:.0f} s; see {log_path}")


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
        if not _gone(dep, timeout):
            proc.kill()
            if not _gone(dep, 5.0):
                raise LocalError(f"{dep.name}: pid {dep.pid} survived SIGKILL")
    forget(dep)
    return was_running


def _gone(dep: LocalDeployment, timeout: float) -> bool:
    """Wait until it no longer runs; an exited process its parent has not reaped yet counts as gone."""
    deadline = time.monotonic() + timeout
    while dep.running():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def forget(dep: LocalDeployment) -> None:
    """Remove its state file and config, once it no longer runs."""
    state_file(dep.name).unlink(missing_ok=True)
    Path(dep.config).unlink(missing_ok=True)


def curl_line(endpoint: str, model: str, api_key: str | None) -> str:
    auth = ' -H "Authorization: Bearer $NEMODEPLOY_API_KEY"' if api_key else ""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32})
    return f"curl {endpoint}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'"


def local_api_key(name: str, host: str, given: str | None) -> tuple[str | None, Path | None]:
    """(key, file when just generated): `given`, else on a non-loopback bind the key kept for `name`
    (<deployments>/secrets/<name>.api_key, 0600) or a new one kept there. None on loopback: only
    this machine's users reach it."""
    if given or _is_loopback(host):
        return given, None
    path = deployments_dir() / "secrets" / f"{name}.api_key"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), None
    key = cluster_secrets.generate()
    return key, cluster_secrets.write_private(path, key)


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_local(config: EngineConfig, host: str = "127.0.0.1", port: int | None = None, api_key: str | None = None,
              detach: bool = False, name: str | None = None, register: bool = False) -> LocalDeployment | None:
    """Serve `config` on this machine. Foreground: blocks until Ctrl-C / SIGTERM. Detached:
    returns the deployment once /health is OK. `name` (default: the served model name) keys
    the state file; `register` records a foreground deployment there too, for `status` and
    `down` (a detached one always is). Raises LocalError before anything starts when it cannot."""
    from nemodeploy.engine import server

    model = config.served_model_name or Path(config.model).name
    name = name or model
    problem = checkpoint_problem(config.model)
    if problem:
        raise NotACheckpoint(problem)
    api_key, key_file = local_api_key(name, host, api_key)
    if key_file is not None:
        click.echo(f"{name}: {host} is not a loopback address, so the API requires a key; generated (shown once, "
                   f"kept in {key_file}, mode 0600): {api_key}")
    if detach:
        dep = start_detached(config, name, host, port or free_port(host), api_key)
        click.echo(f"{name}: serving {model} at {dep.endpoint}/v1 (pid {dep.pid}, log {dep.log}); "
                   "`nemodeploy down` stops it")
        click.echo(curl_line(dep.endpoint, model, api_key))
        return dep
    if register:
        _not_running(name)
    sock = _listen(host, port or 0)
    port = sock.getsockname()[1]
    endpoint = f"http://{host}:{port}"
    dep = None
    if register:
        me = psutil.Process()
        dep = LocalDeployment(name, me.pid, host, port, config.model, "", str(_write_config(config, name)),
                              time.time(), me.create_time())
        state_file(name).write_text(json.dumps(asdict(dep), indent=2))

    def ready() -> None:
        click.echo(f"{name}: serving {model} at {endpoint}/v1 (Ctrl-C stops)")
        click.echo(curl_line(endpoint, model, api_key))

    try:
        server.run(config, sock, api_key, on_ready=ready)
    finally:
        if dep is not None:
            forget(dep)
    return None


def up_local(topology, plan, host: str = "127.0.0.1", port: int | None = None, api_key: str | None = None,
             detach: bool = False) -> LocalDeployment | None:
    """`nemodeploy up` for a one-node loopback topology: its plan's EngineConfig, served here."""
    from nemodeploy.backends.engine_config import engine_config

    return run_local(engine_config(topology, plan), host, port, api_key, detach, name=topology.name, register=True)


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
        try:
            click.echo(f"{dep.name}: {'stopped' if stop(dep) else 'was not running'} (pid {dep.pid})")
        except LocalError as err:
            raise click.ClickException(str(err)) from None
    return [d.name for d in deps]


def local_status() -> list[dict]:
    """One row per deployment: name, pid, endpoint, model, running, healthy, log ("" in the foreground)."""
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
        log = f"log {r['log']}" if r["log"] else "in the foreground"
        click.echo(f"{r['name']}: {state}, pid {r['pid']}, {r['endpoint']}/v1, model {r['model']}, {log}")
