"""A cluster that `up` brings up is closed to whoever lacks its Ray token, and no secret is ever on a
command line: the token is in a 0600 file on every node, every remote command quotes its values.

One cluster for the module; the command lines of every test host are scanned while `up` runs.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import httpx
import pytest

from nemodeploy.cluster import lifecycle, secrets, ssh, state, testhosts
from nemodeploy.cluster.ray_bringup import CLUSTER_ENV, rotate_sessions

pytestmark = [pytest.mark.netns, pytest.mark.slow]

_TASK = "import ray, sys; ray.init(address=sys.argv[1]); print('RESULT', ray.get(ray.remote(lambda: 41 + 1).remote()))"



@pytest.fixture(scope="module")
def secured(testbed, topology, ray_settings, argv_scan):
    with argv_scan() as scan:
        up = lifecycle.up_cluster(topology, known_hosts=testbed.known_hosts_path, settings=ray_settings)
    yield up, scan
    if state.load(topology.name) is not None:
        lifecycle.down_cluster(topology.name, settings=ray_settings)


def _outsider_env(**extra: str) -> dict[str, str]:
    """An environment with no Ray token anywhere (no RAY_AUTH_*, a HOME without ~/.ray)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": "/nonexistent", "RAY_gcs_rpc_server_reconnect_timeout_s": "5", **extra}


def _driver(host, address: str) -> list[str]:
    """A driver in `host` that connects to `address` and runs one task."""
    return testhosts.host_argv(host, [sys.executable, "-c", _TASK, address])


def test_no_secret_is_on_any_command_line_and_the_token_file_is_private(secured, testbed, topology):
    _, scan = secured
    token = secrets.read(topology.name, secrets.RAY_TOKEN)
    assert token and len(token) >= 32
    assert any("raylet" in line for line in scan.lines), "the scan saw none of Ray's processes"
    assert any("gcs_server" in line for line in scan.lines)
    assert scan.holding(token) == []
    for host in testbed.hosts:
        path = secrets.remote_path(secrets.RAY_TOKEN)
        mode = testhosts.run_in_host(host, ["stat", "-c", "%a %s", path], check=True).stdout.split()
        assert mode == ["600", str(len(token))], host.name
        folder = testhosts.run_in_host(host, ["stat", "-c", "%a", secrets.REMOTE_DIR], check=True).stdout.strip()
        assert folder == "700"
    local = secrets.local_dir(topology.name) / secrets.RAY_TOKEN
    assert stat.S_IMODE(local.stat().st_mode) == 0o600


def test_a_driver_runs_tasks_only_with_the_token(secured, testbed):
    """Three drivers at once from h2: the cluster's token (runs the task), none, a wrong one (refused)."""
    h1, h2, _ = testbed.hosts
    gcs = f"{h1.ip}:6379"
    runs = {
        "token": _outsider_env(**CLUSTER_ENV),
        "none": _outsider_env(),
        "wrong": _outsider_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="x" * 43),
    }
    procs = {name: subprocess.Popen(_driver(h2, gcs), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, env in runs.items()}
    outs = {name: (p.communicate(timeout=180), p.returncode) for name, p in procs.items()}
    (out, err), rc = outs["token"]
    assert rc == 0 and "RESULT 42" in out, err[-2000:]
    for name in ("none", "wrong"):
        (out, err), rc = outs[name]
        assert rc != 0 and "RESULT" not in out, name
        assert "Failed to connect to Ray cluster" in err or "Authentication" in err or "Unauthenticated" in err, err[-1500:]


def test_ray_client_without_the_token_is_refused(secured, testbed):
    h1, h2, _ = testbed.hosts
    done = subprocess.run(_driver(h2, f"ray://{h1.ip}:10001"), env=_outsider_env(), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode != 0 and "RESULT" not in done.stdout
    assert "ConnectionError" in done.stderr


def test_no_port_of_the_head_answers_without_the_token(secured, testbed):
    """Every TCP port the head listens on: a driver without the token runs no task through it (one
    driver per port, at once), and no HTTP server there takes a job submission."""
    h1, h2, _ = testbed.hosts
    listening = testhosts.run_in_host(h1, ["ss", "-ltnH"], check=True).stdout.splitlines()
    ports = sorted({line.split()[3].rsplit(":", 1)[1] for line in listening
                    if not line.split()[3].startswith(("127.", "[::ffff:127.", "[::1]"))} - {"22"})
    assert "6379" in ports and "10001" in ports and len(ports) >= 5
    drivers = {port: subprocess.Popen(_driver(h2, f"{h1.ip}:{port}"), env=_outsider_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True) for port in ports}
    ran = {port: p.communicate(timeout=240)[0] for port, p in drivers.items()}
    assert [port for port, out in ran.items() if "RESULT" in out] == []
    job = {"entrypoint": "touch /tmp/JOB_RAN"}
    for port in ports:
        try:
            status = httpx.post(f"http://{h1.ip}:{port}/api/jobs/", json=job, timeout=3).status_code
        except httpx.HTTPError:
            continue  # not HTTP at all
        assert status >= 400, f"port {port} took a job submission (HTTP {status})"
    time.sleep(1)
    assert testhosts.run_in_host(h1, ["test", "-e", "/tmp/JOB_RAN"]).returncode != 0


HOSTILE = ["a b", "x$(touch /tmp/INJECTED)y", "`touch /tmp/INJECTED`", "'; touch /tmp/INJECTED; '", "-n", "\\\"*?\n"]


def test_remote_commands_carry_any_value_as_data(secured, testbed, topology):
    h1 = testbed.hosts[0]
    target = ssh.Target("h1", h1.ip, key=h1.key_path)
    with ssh.connect(target, testbed.known_hosts_path) as shell:
        for value in HOSTILE:
            assert shell.check(["printf", "%s", value]).out == value
            assert shell.check(ssh.sh('printf %s "$1"', value)).out == value
        folder = "/tmp/nd odd; touch /tmp/INJECTED $(touch /tmp/INJECTED)"
        shell.check(["mkdir", "-p", "--", f"{folder}/session_2020-01-01_00-00-00_000000_1"])
        rotate_sessions(shell, folder, 0)
        assert shell.run(["ls", "-A", "--", folder]).out == ""
        shell.put_secret(f"{folder}/s", "secret")
        assert shell.check(["cat", "--", f"{folder}/s"]).out == "secret"
        shell.check(["rm", "-rf", "--", folder])
    assert testhosts.run_in_host(h1, ["test", "-e", "/tmp/INJECTED"]).returncode != 0


def test_down_removes_the_token_everywhere(secured, testbed, topology, ray_settings):
    lifecycle.down_cluster(topology, settings=ray_settings)
    assert secrets.read(topology.name, secrets.RAY_TOKEN) is None
    for host in testbed.hosts:
        assert testhosts.run_in_host(host, ["test", "-e", secrets.remote_path(secrets.RAY_TOKEN)]).returncode != 0
