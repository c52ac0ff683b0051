"""Preflight of 16 test hosts against preflight of one: does the run scale with the slowest node, not the sum?

Makes a bed of 16 hosts (network namespaces with sshd; needs root), then alternates runs of
`run_preflight` over the first host alone and over all 16 (same code path as `nemodeploy
preflight`), and prints the median wall time of each and their ratio as JSON. The baseline (1 host)
runs in the same process on the same bed, so the ratio, not the seconds, is the result.

    python benchmarks/preflight_scale.py [--hosts 16] [--repeats 3] [--bandwidth-seconds 0.5] [--machines shared,separate]

It measures two beds, one after the other:

- `shared`: the hosts as they come, sharing this machine's cores and root's home;
- `separate`: each host made more like a machine of its own: its own CPU share (a cgroup allowing
  cores / (2 x hosts) cores, so all hosts together use at most half the machine and the controller
  and the kernel's networking have the rest) and its own copy-on-write home. A node then has the
  same CPU whether 1 or 16 run, as on 16 identical machines, and no login shell of one host waits
  on another's lock file in the shared home (root's `.bashrc` here runs `pyenv rehash`, which
  takes a lock in ~/.pyenv). The ratio of this bed is preflight's own scaling.

In the shared bed all 16 hosts share this machine's cores, so the work each node does (its sshd session, its login
shell, its Python probe) cannot overlap here the way it does on 16 real machines. Each run's
`work_cpu_s` is how much CPU time it cost: the controller (this process) plus everything that ran
in the hosts (each host's sshd and PID 1, which reap its sessions' processes, and with them the login
shells and probes they ran), so other jobs on the machine do not count. A run cannot take less wall time than
work_cpu_s / cores here: that quotient is the floor on this machine. The machine's own busy time
over each run (/proc/stat) is printed too, to show how loaded it was. `nodes_in_flight_at_once` shows whether the
nodes ran concurrently at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

from nemodeploy.cluster import testhosts
from nemodeploy.cluster.errors import ClusterError
from nemodeploy.preflight.runner import Options, run_preflight
from nemodeploy.topology.loader import loads


def busy_cpu_s() -> float:
    """CPU-seconds the whole machine has spent busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _accounting_pids(bed) -> list[int]:
    """Per host: its PID 1 and its listening sshd (a child of PID 1: it daemonised). Their children's CPU
    time reaches them when they reap them: the sessions' processes (sshd) and the orphans (PID 1)."""
    pids = []
    for host in bed.hosts:
        pids.append(host.init_pid)
        for task in Path(f"/proc/{host.init_pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                if Path(f"/proc/{child}/comm").read_text().strip() == "sshd":
                    pids.append(int(child))
    return pids


def work_cpu_s(accounting_pids: list[int]) -> float:
    """CPU-seconds of this process and of everything that ran in the hosts: what a preflight run costs,
    whatever else runs on the machine."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    for pid in accounting_pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return total


def measure(bed, repeats: int, bandwidth_seconds: float) -> dict:
    """Alternate preflight of the first host alone and of every host; medians, ratio and CPU accounting."""
    count = len(bed.hosts)
    everyone = loads(bed.topology_yaml("scale"))
    alone = everyone.model_copy(update={"nodes": everyone.nodes[:1]})
    options = Options(python=sys.executable, known_hosts=bed.known_hosts_path, bandwidth_seconds=bandwidth_seconds)
    keys = ("1", str(count))
    seconds: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in keys}
    work: dict[str, list[float]] = {k: [] for k in keys}
    accounting = _accounting_pids(bed)
    overlap: list[float] = []
    failures = 0
    for _ in range(repeats):
        for key, topology in zip(keys, (alone, everyone)):
            spans: dict[str, list[float]] = {}
            start, cpu_start, work_start = time.monotonic(), busy_cpu_s(), work_cpu_s(accounting)
            report = run_preflight(topology, None, options,  # no plan: the checks against it are skipped
                                   progress=lambda node, what: spans.setdefault(node, []).append(time.monotonic()))
            wall = time.monotonic() - start
            seconds[key].append(wall)
            cpu[key].append(busy_cpu_s() - cpu_start)
            time.sleep(0.5)  # the hosts' sshd reap the sessions that just closed
            work[key].append(work_cpu_s(accounting) - work_start)
            if key != "1":  # how many nodes were in flight at once, on average: the sum of their spans over the wall time
                overlap.append(sum(max(t) - min(t) for t in spans.values()) / wall)
            failures += sum(r.name == "reach" for r in report.results)
    one, many = statistics.median(seconds["1"]), statistics.median(seconds[str(count)])
    return {
        "median_s_1_host": round(one, 2),
        f"median_s_{count}_hosts": round(many, 2),
        "ratio": round(many / one, 2),
        "runs_s": {k: [round(s, 2) for s in v] for k, v in seconds.items()},
        "work_cpu_s": {k: round(statistics.median(v), 2) for k, v in work.items()},
        f"floor_s_{count}_hosts_on_this_machine": round(statistics.median(work[str(count)]) / os.cpu_count(), 2),
        "machine_busy_cpu_s": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
        "nodes_in_flight_at_once": round(statistics.median(overlap), 1),
        "unreachable_node_results": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bed", default="ndq")
    parser.add_argument("--subnet", default="10.213.51.0/24")
    parser.add_argument("--bandwidth-seconds", type=float, default=0.5, help="each node's TCP sample (as --bandwidth-seconds)")
    parser.add_argument("--machines", default="shared,separate", help="which beds, comma-separated: shared, separate")
    args = parser.parse_args()
    machines = args.machines.split(",")
    if not set(machines) <= {"shared", "separate"}:
        sys.exit(f"preflight_scale: --machines takes shared and/or separate, not {args.machines!r}")
    reason = testhosts.unavailable_reason()
    if reason:
        sys.exit(f"preflight_scale: {reason}")
    out = {"hosts": args.hosts, "repeats": args.repeats, "bandwidth_seconds": args.bandwidth_seconds}
    for machine in machines:
        bed_options = {"cpu_per_host": os.cpu_count() / (2 * args.hosts), "private_home": True} if machine == "separate" else {}
        try:
            with testhosts.test_hosts(args.hosts, name=args.bed, subnet=args.subnet, **bed_options) as bed:
                out[machine] = {**bed_options, **measure(bed, args.repeats, args.bandwidth_seconds)}
        except ClusterError as err:
            sys.exit(f"preflight_scale: {machine} bed: {err}")
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    out["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
