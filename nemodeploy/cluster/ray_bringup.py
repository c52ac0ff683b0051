"""Ray on one node, over SSH: pre-start checks, `ray start` for head and workers, `ray stop`, node listing.

Everything runs on the node through a `Shell`. Python snippets run with the
interpreter of the node's `ray` script (read from its #! line), which is the
one that can import ray even when `python3` on the PATH cannot. Every Ray
process runs with token authentication (CLUSTER_ENV), its token in a 0600 file.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from nemodeploy.cluster import secrets
from nemodeploy.cluster.errors import ClusterError
from nemodeploy.cluster.ssh import Shell, sh
from nemodeploy.topology.netenv import node_env
from nemodeploy.topology.schema import Node

# Fast failure detection on the head: a node whose link goes down is dead in ~6 s instead of ~64 s.
HEALTH_CHECK_ENV = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}

# Runs the interpreter of the node's `ray` script (its #! line) with "$@". $PY unquoted on purpose:
# a `#!/usr/bin/env python3` line is two words.
_RAY_PYTHON = (
    'RAY=$(command -v ray) || { echo "ray is not on the PATH of a non-interactive SSH session" >&2; exit 127; }; '
    "PY=$(sed -n '1s/^#!//p' \"$RAY\"); exec $PY \"$@\""
)

# Every process of the cluster (raylets, GCS, drivers, workers) runs with Ray's token authentication,
# the token read from a 0600 file that `up` puts on every node: without it, anyone who reaches a
# Ray port runs code as the nodes' user. A raylet hands the variables down to the workers it starts.
CLUSTER_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": secrets.remote_path(secrets.RAY_TOKEN)}
_GCS_CLIENT_ENV = {**CLUSTER_ENV, "RAY_gcs_rpc_server_connect_timeout_s": "3", "RAY_gcs_rpc_server_reconnect_timeout_s": "8"}


def ray_python(*args: str, env: dict[str, str] | None = None) -> list[str]:
    """The argv that runs the node's Ray-capable Python with `args`, in `env` (names and paths, never secrets)."""
    return ["env", *(f"{k}={v}" for k, v in (env or {}).items()), *sh(_RAY_PYTHON, *args)]


_PREFLIGHT = r"""
import json, socket, sys
import ray
busy = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("0.0.0.0", port))
    except OSError:
        busy.append(port)
    finally:
        s.close()
print(json.dumps({"ray_version": ray.__version__, "busy": busy}))
"""

# Reads the node table from the GCS without starting a driver. A TCP probe first: the GCS
# client itself waits ~40 s for a GCS that is not there.
_NODES = r"""
import json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
try:
    socket.create_connection((host, int(port)), timeout=3).close()
except OSError:
    print("null"); sys.exit(0)
from ray._raylet import GcsClient
infos = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=10).values()
print(json.dumps([{
    "node_id": i.node_id.hex(), "ip": i.node_manager_address, "alive": i.state == 0,
    "is_head": i.is_head_node, "resources": dict(i.resources_total), "temp_dir": i.temp_dir,
} for i in infos]))
"""


@dataclass(frozen=True)
class RaySettings:
    """How Ray is started on every node. None leaves Ray's own default (which sizes from the machine)."""

    port: int = 6379
    object_store_memory: int | None = None
    memory: int | None = None
    num_cpus: int | None = None
    temp_root: str = "/tmp/ndray"
    head_env: dict[str, str] = field(default_factory=lambda: dict(HEALTH_CHECK_ENV))
    keep_sessions: int = 3  # Ray session folders kept per node (each `ray start` makes one)
    start_timeout_s: float = 90.0
    join_timeout_s: float = 90.0
    stop_timeout_s: float = 60.0


@dataclass(frozen=True)
class RayNode:
    """A row of the GCS node table."""

    node_id: str
    ip: str
    alive: bool
    is_head: bool
    resources: dict[str, float]
    temp_dir: str = ""


def temp_dir(settings: RaySettings, node: Node) -> str:
    # Short on purpose: Ray's unix sockets live below it and their paths are limited to 107 bytes.
    return f"{settings.temp_root}/{node.name}"


def _resource_args(node: Node, settings: RaySettings) -> list[str]:
    if node.accelerators.kind == "cpu":
        args = [f"--num-cpus={settings.num_cpus or node.accelerators.count}", "--num-gpus=0"]
    else:
        args = [f"--num-gpus={node.accelerators.count}"]
        if settings.num_cpus:
            args.append(f"--num-cpus={settings.num_cpus}")
    if settings.object_store_memory:
        args.append(f"--object-store-memory={settings.object_store_memory}")
    if settings.memory:
        args.append(f"--memory={settings.memory}")
    return args


def start_command(node: Node, settings: RaySettings, head_address: str | None) -> str:
    """`ray start` for the head (head_address None) or for a worker joining head_address."""
    env = {**CLUSTER_ENV, **node_env(node)}
    argv = ["ray", "start", f"--node-ip-address={node.address}", f"--temp-dir={temp_dir(settings, node)}"]
    if head_address is None:
        env.update(settings.head_env)
        # No dashboard: nothing of nemodeploy uses it. Ray offers no switch for the Ray Client server
        # (port 10001 on the node's address): like every Ray port, it requires the token.
        argv += ["--head", f"--port={settings.port}", "--include-dashboard=false"]
    else:
        argv += [f"--address={head_address}"]
    argv += [*_resource_args(node, settings), "--disable-usage-stats"]
    return shlex.join(["env", *[f"{k}={v}" for k, v in env.items()], *argv])


def _python(shell: Shell, script: str, args: list[str], timeout: float, env: dict[str, str] | None = None):
    result = shell.run(ray_python("-c", script, *args, env=env), timeout=timeout)
    if result.rc == 127:
        raise ClusterError(
            "`ray` is not installed on the node (or not on the PATH of non-interactive SSH sessions); "
            "install ray[default] with the same version on every node",
            shell.target.name,
        )
    return result


def _json(shell: Shell, result, what: str):
    if result.rc != 0:
        raise ClusterError(f"{what} failed on the node: {result.tail(3)}", shell.target.name)
    try:
        return json.loads(result.out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ClusterError(f"{what}: unexpected output {result.out.strip()[-200:]!r}", shell.target.name) from None


def preflight(shell: Shell, ports: dict[int, str]) -> str:
    """Check that `ray` works and that the ports are free; returns the node's Ray version."""
    facts = _json(shell, _python(shell, _PREFLIGHT, [str(p) for p in ports], 60), "pre-start check")
    for port in facts["busy"]:
        holder = re.search(r'\("([^"]+)",pid=(\d+)', shell.run(["ss", "-ltnpH", f"sport = :{port}"], timeout=15).out)
        used_by = f" by {holder[1]} (pid {holder[2]})" if holder else ""
        raise ClusterError(
            f"port {port} ({ports[port]}) on {shell.target.address} is already in use{used_by}; "
            f"stop what holds it or configure another {ports[port]} port",
            shell.target.name,
        )
    return facts["ray_version"]


def start(shell: Shell, node: Node, settings: RaySettings, head_address: str | None) -> None:
    role = "head" if head_address is None else "worker"
    rotate_sessions(shell, temp_dir(settings, node), settings.keep_sessions - 1)
    shell.check(start_command(node, settings, head_address), timeout=settings.start_timeout_s, what=f"`ray start` ({role})")


def stop(shell: Shell, settings: RaySettings) -> None:
    """`ray stop` on the node: ends the Ray processes of this user there, nothing else."""
    shell.check(["ray", "stop", "--force"], timeout=settings.stop_timeout_s, what="`ray stop`")


# Session folders are named session_<date>_<time>_<micros>_<pid>: newest last in name order.
_ROTATE = (
    'cd "$1" 2>/dev/null || exit 0; '
    'ls -1d session_2* 2>/dev/null | sort -r | tail -n +$(($2 + 1)) | while IFS= read -r d; do rm -rf -- "$d"; done'
)


def rotate_sessions(shell: Shell, ray_temp_dir: str, keep: int) -> None:
    """Delete all but the newest `keep` Ray session folders (logs, sockets) of a node where Ray is stopped."""
    shell.check(sh(_ROTATE, ray_temp_dir, str(max(keep, 0))), timeout=120, what="removing old Ray sessions")


_REACH = r"""
import json, socket, sys
host, timeout, ports = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
failed = {}
for port in ports:
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        failed[port] = "timed out" if isinstance(err, socket.timeout) else (err.strerror or str(err))
print(json.dumps(failed))
"""


def unreachable_ports(shell: Shell, host: str, ports: list[int], timeout: float = 2.0) -> dict[int, str]:
    """TCP-connect from `shell`'s node to host:port for each port; returns {port: why} for those that failed.

    A one-way partition (the node cut from the head's GCS port while the head still reaches the
    node) leaves the GCS reporting the node alive: only a probe from the node itself sees it.
    """
    result = _python(shell, _REACH, [host, str(timeout), *map(str, ports)], timeout * len(ports) + 30)
    return {int(p): why for p, why in _json(shell, result, "probing the head's ports").items()}


def put_token(shell: Shell, token: str) -> None:
    shell.put_secret(secrets.remote_path(secrets.RAY_TOKEN), token)


def remove_token(shell: Shell) -> None:
    shell.check(["rm", "-f", "--", secrets.remote_path(secrets.RAY_TOKEN)], what="removing the Ray token")


def list_nodes(shell: Shell, gcs_address: str) -> list[RayNode] | None:
    """The cluster's nodes as the GCS sees them, queried on `shell`'s node; None when no GCS answers.

    Something else listening on the GCS port makes Ray's client abort after its reconnect
    timeout (shortened here to seconds): that is "no GCS" too, and the port check names the holder.
    """
    result = _python(shell, _NODES, [gcs_address], 90, env=_GCS_CLIENT_ENV)
    if result.rc != 0:
        return None
    rows = _json(shell, result, "reading the Ray node table")
    return None if rows is None else [RayNode(**row) for row in rows]
