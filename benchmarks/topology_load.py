"""How long a large topology takes to load and plan, against PyYAML loading the same file.

    python benchmarks/topology_load.py [--repeat N]

Two 1 MB files: 5000 nodes of 8 GPUs (the size goes into nodes, so planning grows too) and one
node with a 1 MB description (the size is all text). For each: the strict loader in this process
(CPU seconds, median) beside `yaml.load` with PyYAML's pure-Python SafeLoader and its libyaml
CSafeLoader (what loading cost before, and the floor), and the whole `nemodeploy plan FILE --json`
as a new process (wall and CPU seconds, median; imports included). Then the refusal of a 50 MB
file, which the loader never reads past its size limit.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from nemodeploy.topology.loader import loads

NODE = ("  - name: n{i}\n    address: 10.{a}.{b}.{c}\n    ssh: {{user: ubuntu, port: 22}}\n"
        "    accelerators: {{kind: h100-sxm, count: 8}}\n"
        "    nics: [{{name: ens1, mtu: 9000, speed_gbps: 400, rdma: true, hca: mlx5_0}}]\n")
TAIL = "model: {id: nemotron-3-ultra}\nengine: {kind: vllm}\n"


def many_nodes(count: int, size: int = 0) -> str:
    """`count` nodes (5000 x 8 GPUs is a layout the planner can fit), the description padding to `size`."""
    nodes = "".join(NODE.format(i=i, a=i >> 16 & 255, b=i >> 8 & 255, c=i & 255) for i in range(count))
    text = "name: big\nnodes:\n" + nodes + TAIL
    return f"description: {'x' * max(size - len(text) - 14, 0)}\n" + text


def long_text(size: int) -> str:
    words = "a long description of this cluster, "
    head = "name: big\ndescription: >\n"
    body = "".join(f"  {words * 2}\n" for _ in range(size // (len(words) * 2 + 3)))
    return head + body + "nodes:\n" + NODE.format(i=0, a=0, b=0, c=1) + TAIL


def cpu_median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def cli_plan(path: Path, repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `nemodeploy plan PATH --json` in a fresh process."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "nemodeploy.cli", "plan", str(path), "--json"],
                              capture_output=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        assert done.returncode in (0, 1), done.stderr
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'file':<22} {'bytes':>9} {'strict s':>9} {'pyyaml s':>9} {'ratio':>6} {'libyaml s':>9} "
              f"{'plan wall s':>11} {'plan cpu s':>10}")
        for label, text in (("5000 nodes", many_nodes(5000, 1_000_000)), ("1 MB description", long_text(1_000_000))):
            path = Path(tmp) / "topology.yaml"
            path.write_text(text)
            strict = cpu_median(lambda: loads(text), args.repeat)
            pure = cpu_median(lambda: yaml.load(text, Loader=yaml.SafeLoader), 1)
            libyaml = cpu_median(lambda: yaml.load(text, Loader=yaml.CSafeLoader), args.repeat)
            wall, cpu = cli_plan(path, args.repeat)
            print(f"{label:<22} {len(text):>9} {strict:>9.3f} {pure:>9.3f} {pure / strict:>5.1f}x {libyaml:>9.3f} "
                  f"{wall:>11.2f} {cpu:>10.2f}")
        huge = Path(tmp) / "huge.yaml"
        with huge.open("wb") as f:
            f.write(many_nodes(5).encode())
            f.truncate(50 * 2**20)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "nemodeploy.cli", "plan", str(huge)], capture_output=True,
                              text=True)
        print(f"50 MB file: exit {done.returncode} in {time.perf_counter() - start:.2f} s: {done.stderr.strip()}")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
