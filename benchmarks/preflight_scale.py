"""Preflight of 16 test hosts against preflight of one: does the run scale with the slowest node, not the sum?

Makes one bed of 16 hosts (network namespaces with sshd; needs root), then alternates runs of
`run_preflight` over the first host alone and over all 16 (same code path as `nemodeploy
preflight`), and prints the median wall time of each and their ratio as JSON. The baseline (1 host)
runs in the same process on the same machine, so the ratio, not the seconds, is the result.

    python benchmarks/preflight_scale.py [--hosts 16] [--repeats 3] [--bandwidth-seconds 0.5] [--bed ndq] [--subnet 10.213.51.0/24]

All 16 hosts share this machine's cores, so the parts of a run that need CPU (Python on every
node, the TCP bandwidth samples: one stream per node) cannot overlap here the way they do on 16
real machines; `nodes_in_flight_at_once` shows whether the nodes ran concurrently at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from nemodeploy.cluster import testhosts
from nemodeploy.preflight.runner import Options, run_preflight
from nemodeploy.topology.loader import loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bed", default="ndq")
    parser.add_argument("--subnet", default="10.213.51.0/24")
    parser.add_argument("--bandwidth-seconds", type=float, default=0.5, help="each node's TCP sample (as --bandwidth-seconds)")
    args = parser.parse_args()
    reason = testhosts.unavailable_reason()
    if reason:
        sys.exit(f"preflight_scale: {reason}")
    with testhosts.test_hosts(args.hosts, name=args.bed, subnet=args.subnet) as bed:
        everyone = loads(bed.topology_yaml("scale"))
        alone = everyone.model_copy(update={"nodes": everyone.nodes[:1]})
        options = Options(python=sys.executable, known_hosts=bed.known_hosts_path, bandwidth_seconds=args.bandwidth_seconds)
        seconds: dict[str, list[float]] = {"1": [], str(args.hosts): []}
        overlap: list[float] = []
        failures = 0
        for _ in range(args.repeats):
            for key, topology in (("1", alone), (str(args.hosts), everyone)):
                spans: dict[str, list[float]] = {}
                start = time.monotonic()
                report = run_preflight(topology, None, options,  # no plan: the checks against it are skipped
                                       progress=lambda node, what: spans.setdefault(node, []).append(time.monotonic()))
                wall = time.monotonic() - start
                seconds[key].append(wall)
                if key != "1":  # how many nodes were in flight at once, on average: the sum of their spans over the wall time
                    overlap.append(sum(max(t) - min(t) for t in spans.values()) / wall)
                failures += sum(r.name == "reach" for r in report.results)
    one, many = statistics.median(seconds["1"]), statistics.median(seconds[str(args.hosts)])
    print(json.dumps({
        "hosts": args.hosts,
        "repeats": args.repeats,
        "median_s_1_host": round(one, 2),
        f"median_s_{args.hosts}_hosts": round(many, 2),
        "ratio": round(many / one, 2),
        "runs_s": {k: [round(s, 2) for s in v] for k, v in seconds.items()},
        "nodes_in_flight_at_once": round(statistics.median(overlap), 1),
        "bandwidth_seconds": args.bandwidth_seconds,
        "unreachable_node_results": failures,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_1m": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
