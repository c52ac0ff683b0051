"""What `up` started, kept on disk so that `down`, `status` and `logs` act on exactly that.

One JSON file per topology name under the cache directory (nemodeploy.paths.cache_dir)/clusters/.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nemodeploy.cluster.errors import ClusterError
from nemodeploy.paths import cache_dir


@dataclass
class NodeState:
    """One node as `up` left it. The SSH settings are kept so that `down` needs only the name.

    `address` is where SSH reaches the node; `ip` the address Ray runs on there (its
    --node-ip-address: the source of the node's route to the head, as `up`'s preflight measured
    it), empty when it is `address`.
    """

    name: str
    address: str
    ssh_user: str
    ssh_port: int
    ssh_key: str | None
    temp_dir: str
    head: bool = False
    node_id: str = ""
    started_at: float = 0.0
    ip: str = ""

    @property
    def ray_ip(self) -> str:
        return self.ip or self.address


@dataclass
class EngineRecord:
    """An engine served on the cluster; recorded by the engine helper for `status`."""

    kind: str
    health_url: str


@dataclass
class ClusterState:
    topology: str
    gcs_address: str
    known_hosts: str | None
    nodes: list[NodeState] = field(default_factory=list)
    engine: EngineRecord | None = None
    updated_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return asdict(self)


def state_path(topology: str) -> Path:
    return cache_dir() / "clusters" / f"{topology}.json"


def save(state: ClusterState) -> Path:
    state.updated_at = time.time()
    path = state_path(state.topology)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_dict(), indent=2))
    tmp.replace(path)
    return path


def load(topology: str) -> ClusterState | None:
    path = state_path(topology)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ClusterError(f"cannot read cluster state {path}: {err}; delete it if the cluster is gone") from None
    nodes = [NodeState(**n) for n in data.pop("nodes")]
    engine = data.pop("engine")
    return ClusterState(**data, nodes=nodes, engine=EngineRecord(**engine) if engine else None)


def forget(topology: str) -> None:
    state_path(topology).unlink(missing_ok=True)


def record_engine(topology: str, kind: str, health_url: str | None) -> None:
    """Record (or with None, clear) the engine that serves on a cluster `up` started."""
    state = load(topology)
    if state is None:
        raise ClusterError(f"cluster {topology!r} is not up (no state at {state_path(topology)}); run `nemodeploy up` first")
    state.engine = EngineRecord(kind, health_url) if health_url else None
    save(state)
