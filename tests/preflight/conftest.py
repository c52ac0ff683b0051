"""Four test hosts (network namespaces with sshd) at MTU 9000, and preflight run against them.

Four, not three: the tiny model plans on 4 CPU nodes (tp 4 divides its 4 attention heads), and with more
than two hosts a fault on one host can be told apart from one on its peers.

Bed name and subnet come from NEMODEPLOY_PREFLIGHT_BED / _SUBNET
(default `ndp` on 10.213.50.0/24), so parallel runs on one machine do not collide.
"""

from __future__ import annotations

import os
import sys

import pytest
from preflight_faults import JUMBO, problems

from nemodeploy.cluster import testhosts
from nemodeploy.plan.compiler import compile_plan
from nemodeploy.preflight.runner import Options, run_preflight
from nemodeploy.topology.loader import loads



@pytest.fixture(scope="session")
def bed():
    pytest.importorskip("paramiko", reason="remote preflight needs the cluster extra (pip install -e .[cluster])")
    reason = testhosts.unavailable_reason()
    if reason:
        pytest.skip(reason)
    name = os.environ.get("NEMODEPLOY_PREFLIGHT_BED", "ndp")
    subnet = os.environ.get("NEMODEPLOY_PREFLIGHT_SUBNET", "10.213.50.0/24")
    with testhosts.test_hosts(4, mtu=JUMBO, name=name, subnet=subnet) as made:
        yield made


@pytest.fixture(scope="session")
def topology(bed):
    # The tiny model's own context, so that the plan compiles and the checks against it run too.
    return loads(bed.topology_yaml("preflight-test") + "serving:\n  max_context: 4096\n")


@pytest.fixture(scope="session")
def preflight(bed, topology):
    """preflight(): run it against the test hosts, as `nemodeploy preflight` does, and return the report."""
    plan = compile_plan(topology)
    options = Options(python=sys.executable, known_hosts=bed.known_hosts_path, bandwidth_seconds=0.3)
    return lambda: run_preflight(topology, plan, options)


@pytest.fixture(scope="session")
def baseline(preflight):
    """What a healthy set reports (warnings such as this machine's nofile limit stay the same under faults)."""
    return problems(preflight())
