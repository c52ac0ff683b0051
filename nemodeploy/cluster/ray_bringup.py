"""Ray on one node, over SSH: pre-start checks, `ray start` for head and workers, `ray stop`, node listing.

Everything runs on the node through a `Shell`. Python snippets run with the
interpreter of the node's `ray` script (read from its #! line), which is the
one that can import ray even when `python3` on the PATH cannot.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from nemodeploy.cluster.errors import ClusterError
from nemodeploy.cluster.ssh import Shell, quote
from nemodeploy.topology.schema import Node

# Fast failure detection on the head: a node whose link goes down is dead in ~6 s instead of ~64 s.
HEALTH_CHECK_ENV = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}

_FIND_PYTHON = (
    'RAY=$(command -v ray) || { echo "ray is not on the PATH of a non-interactive SSH session" >&2; exit 127; }; '
    "PY=$(sed -n '1s/^#!//p' \"$RAY\")"
)

# Every process of the cluster (raylets, GCS, drivers) must agree on Ray's token authentication.
# Ray 2.60 turns it on for `ray start --head` whenever ~/.ray/auth_token exists (any earlier local
# ray.init() writes one) but not for workers joining by address, which then fail with
# InvalidAuthToken. nemodeploy turns it off on every node and driver: like any Ray cluster, its
# ports belong on a private network (docs/cluster.md).
CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled"}


def env_assignments(env: dict[str, str]) -> str:
    """`K=V K=V ` for a shell command line."""
    return "".join(f"{quote(f'{k}={v}')} " for k, v in env.items())


_GCS_CLIENT_ENV = env_assignments(
    {**CLUSTER_ENV, "RAY_gcs_rpc_server_connect_timeout_s": "3", "RAY_gcs_rpc_server_reconnect_timeout_s": "8"}
)

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


def node_env(node: Node) -> dict[str, str]:
    """Collective-communication settings from the node's first NIC in the topology."""
    if not node.nics:
        return {}
    nic = node.nics[0]
    env = {"NCCL_SOCKET_IFNAME": nic.name, "GLOO_SOCKET_IFNAME": nic.name}
    if not nic.rdma:
        env["NCCL_IB_DISABLE"] = "1"
    return env


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
        argv += ["--head", f"--port={settings.port}", "--include-dashboard=false"]
    else:
        argv += [f"--address={head_address}"]
    argv += [*_resource_args(node, settings), "--disable-usage-stats"]
    return quote("env", *[f"{k}={v}" for k, v in env.items()], *argv)


def _python(shell: Shell, script: str, args: list[str], timeout: float, env: str = ""):
    result = shell.run(f"{_FIND_PYTHON}; {env} $PY -c {quote(script)} {quote(*args)}", timeout=timeout)
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
        holder = re.search(r'\("([^"]+)",pid=(\d+)', shell.run(f"ss -ltnpH 'sport = :{port}' 2>/dev/null", timeout=15).out)
        used_by = f" by {holder[1]} (pid {holder[2]})" if holder else ""
        raise ClusterError(
            f"port {port} ({ports[port]}) on {shell.target.address} is already in use{used_by}; "
            f"stop what holds it or configure another {ports[port]} port",
            shell.target.name,
        )
    return facts["ray_version"]


def start(shell: Shell, node: Node, settings: RaySettings, head_address: str | None) -> None:
    role = "head" if head_address is None else "worker"
    shell.check(start_command(node, settings, head_address), timeout=settings.start_timeout_s, what=f"`ray start` ({role})")


def stop(shell: Shell, settings: RaySettings) -> None:
    """`ray stop` on the node: ends the Ray processes of this user there, nothing else."""
    shell.check("ray stop --force", timeout=settings.stop_timeout_s, what="`ray stop`")


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
