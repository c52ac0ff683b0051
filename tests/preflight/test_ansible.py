"""ansible/: lint-clean, and run for real over SSH against the test hosts.

prepare.yml runs in check mode as it would against real nodes (it reports what it would change and
changes nothing), and for real with `nemodeploy_root` pointed into each host's private /tmp, so its
file tasks really write and a second run must change nothing; the tasks that would install packages
or apply settings to this shared machine (packages, python_env, live sysctl / remount) stay out of
the real run. preflight.yml runs for real, and gathers one JSON report per host.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("ansible-playbook") is None,
                                                    reason="ansible-core is not installed (pip install -e .[ansible])")]


def run(argv: list[str], hosts: str = "h1:h2", **kwargs) -> subprocess.CompletedProcess:
    """ansible-playbook on some of the hosts: enough for "every host", in a fraction of the time on 2 CI cores."""
    # One SSH connection per host and run (its master exits 2 s after the run); color off for the recap parser.
    env = {**os.environ, "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=2s", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0"}
    if argv[0] == "ansible-playbook":
        argv = [*argv, "--limit", hosts]
    return subprocess.run(argv, cwd=ANSIBLE_DIR, capture_output=True, text=True, timeout=300, env=env, **kwargs)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> {ok, changed, unreachable, failed, skipped, ...}."""
    out = {}
    for line in output.split("PLAY RECAP")[-1].splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if match:
            out[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return out


@pytest.mark.skipif(shutil.which("ansible-lint") is None, reason="ansible-lint is not installed (pip install -e .[ansible])")
def test_ansible_lint_clean_at_the_production_profile():
    done = run(["ansible-lint", "--offline", "."])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def inventory(bed, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ansible")
    topology = directory / "hosts.yaml"
    topology.write_text(bed.topology_yaml("ansible-test"))
    path = directory / "inventory.yml"
    done = subprocess.run([sys.executable, "-m", "nemodeploy.cli", "render", "ansible", str(topology), "-o", str(path),
                           "--venv", sys.prefix, "--known-hosts", bed.known_hosts_path, "--python", sys.executable], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return path


@pytest.mark.netns
def test_rendered_inventory_describes_every_host(inventory, bed):
    group = yaml.safe_load(inventory.read_text())["nemodeploy"]
    assert set(group["hosts"]) == {h.name for h in bed.hosts}
    h1 = group["hosts"]["h1"]
    assert (h1["ansible_host"], h1["nemodeploy_nic"], h1["nemodeploy_mtu"]) == (bed.hosts[0].ip, "eth0", 9000)
    assert any(p.startswith("ray[default]==") for p in group["vars"]["nemodeploy_pip_packages"])


@pytest.mark.netns
def test_prepare_in_check_mode_reports_without_changing(inventory):
    written = Path("/etc/security/limits.d/90-nemodeploy.conf")  # the hosts share this machine's /etc
    existed = written.exists()
    done = run(["ansible-playbook", "-i", str(inventory), "prepare.yml", "--check"], hosts="h1")
    assert done.returncode == 0, done.stdout[-3000:]
    counts = recap(done.stdout)
    assert len(counts) == 1 and all(c["failed"] == 0 and c["unreachable"] == 0 for c in counts.values())
    assert all(c["changed"] >= 3 for c in counts.values())  # limits, sysctl and fstab would be written...
    assert written.exists() == existed  # ...and were not


@pytest.mark.netns
def test_prepare_for_real_is_idempotent(inventory):
    argv = ["ansible-playbook", "-i", str(inventory), "prepare.yml", "-e", "nemodeploy_root=/tmp/ndroot",
            "--skip-tags", "packages,python_env"]
    first, second = run(argv, hosts="h1"), run(argv, hosts="h1")
    assert first.returncode == 0 and second.returncode == 0, first.stdout[-3000:] + second.stdout[-3000:]
    assert all(c["changed"] >= 3 for c in recap(first.stdout).values())
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in recap(second.stdout).values()), second.stdout[-3000:]


@pytest.mark.netns
def test_preflight_playbook_gathers_every_node_report(inventory, bed):
    reports = ANSIBLE_DIR / "reports"
    shutil.rmtree(reports, ignore_errors=True)
    try:
        first = run(["ansible-playbook", "-i", str(inventory), "preflight.yml"])
        second = run(["ansible-playbook", "-i", str(inventory), "preflight.yml"])
        assert first.returncode == 0, first.stdout[-3000:]
        assert all(c["changed"] == 0 and c["failed"] == 0 for c in recap(second.stdout).values()), second.stdout[-3000:]
        for h in bed.hosts[:2]:
            report = json.loads((reports / f"{h.name}.json").read_text())
            assert {c["node"] for c in report["checks"]} == {h.name}
            assert report["env"][h.name]["NCCL_SOCKET_IFNAME"] == "eth0"
    finally:
        shutil.rmtree(reports, ignore_errors=True)
