"""`nemodeploy preflight` as a person or a script runs it: base dependencies only for `local`, JSON, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Runs the CLI with torch, ray, paramiko and vllm made unimportable: `preflight local` must not need them.
WITHOUT_HEAVY_DEPS = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "ray", "paramiko", "vllm"}:
            raise ImportError(f"refused in this test: {name}")
sys.meta_path.insert(0, Refuse())
from nemodeploy.cli import main
main(sys.argv[1:], prog_name="nemodeploy")
"""


def nemodeploy(*args: str, env: dict | None = None, guard: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", WITHOUT_HEAVY_DEPS, *args] if guard else [sys.executable, "-m", "nemodeploy.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def test_local_runs_without_torch_ray_or_paramiko():
    done = nemodeploy("preflight", "local", "--json", guard=True)
    assert done.returncode in (0, 1), done.stderr  # 1 only if this machine really fails a check (e.g. port 8000 busy)
    report = json.loads(done.stdout)
    names = {c["name"] for c in report["checks"]}
    assert {"shm", "ulimits", "memory", "packages", "route", "ports"} <= names
    assert all(set(c) == {"node", "name", "status", "measured", "expected", "severity", "remedy"} for c in report["checks"])
    assert report["env"]["localhost"]["VLLM_HOST_IP"] == "127.0.0.1"
    assert done.returncode == (1 if any(c["status"] == "fail" for c in report["checks"]) else 0)


def test_bad_topology_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes:\n  - name: a\n    address: 10.0.0.1\n    accelerators: {kind: h100-sxm, count: 0}\nmodel: {id: m}\n")
    done = nemodeploy("preflight", str(bad))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "count" in done.stderr


@pytest.mark.netns
def test_test_hosts_from_the_command_line(bed, tmp_path):
    topology = tmp_path / "hosts.yaml"
    topology.write_text(bed.topology_yaml("preflight-cli"))
    # --python auto (the default): each host's `ray` script names the interpreter, this environment's.
    done = nemodeploy("preflight", str(topology), "--json", "--bandwidth-seconds", "0.2",
                      env={"NEMODEPLOY_KNOWN_HOSTS": bed.known_hosts_path})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {c["node"] for c in report["checks"]} == {h.name for h in bed.hosts}
    assert {h.name: report["env"][h.name]["VLLM_HOST_IP"] for h in bed.hosts} == {h.name: h.ip for h in bed.hosts}
