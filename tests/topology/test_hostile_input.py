"""Hostile topology files, through the real `nemodeploy` command: each is refused at load with one
located line and exit code 2, quickly, and nothing in it is ever executed or coerced."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemodeploy.topology.loader import MAX_BYTES, MAX_DEPTH, loads

GOOD = """\
name: two-nodes
nodes:
  - name: a
    address: 10.0.0.1
    accelerators: {kind: h100-sxm, count: 8}
  - name: b
    address: node-b.example.com
    accelerators: {kind: h100-sxm, count: 8}
model:
  id: nemotron-3-ultra
"""

LOCATED = re.compile(r"^(?P<file>[^\n]+\.yaml):(?P<line>\d+):(?P<col>\d+): (?P<rest>.+)$")
INJECTED_NAME = "x$(touch${IFS}INJECTED)/h"


def nemodeploy(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "nemodeploy.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    return done, time.monotonic() - start


def refused(tmp_path: Path, content: bytes | str, *command: str) -> str:
    """Run `nemodeploy <command> FILE` on `content`; the answer must be one located line, exit 2, in < 2 s."""
    path = tmp_path / "topology.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    done, seconds = nemodeploy(tmp_path, *(command or ("plan",)), str(path))
    err = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert LOCATED.match(err), err
    assert seconds < 2.0, f"took {seconds:.1f} s"
    assert not (tmp_path / "INJECTED").exists()
    return LOCATED.match(err)["rest"]


HOSTILE = {
    # bytes
    "latin-1": (GOOD.replace("two-nodes", "caf\xe9").encode("latin-1"), "not UTF-8 (byte 0xe9)"),
    "utf-16": (GOOD.encode("utf-16"), "not UTF-8"),
    "nul byte": (GOOD.replace("10.0.0.1", "10.0.0.1\x00"), "control character U+0000"),
    "escape byte": (GOOD.replace("two-nodes", "two\x1b[2Jnodes"), "control character U+001B"),
    "C1 control": (GOOD.replace("two-nodes", "two\x85nodes"), "control character U+0085"),
    "escaped control in a quoted string": (GOOD + 'description: "\\x07\\x1b]0;pwned\\x07"\n', "control character"),
    # tags
    "python object tag": (GOOD.replace("count: 8}\n  - name: b",
                                       "count: !!python/object/apply:os.system ['touch INJECTED']}\n  - name: b"),
                          "YAML tag"),
    "python name tag": (GOOD + "description: !!python/name:os.system\n", "YAML tag"),
    "str tag on a count": (GOOD.replace("count: 8}\n  - name: b", "count: !!int '8'}\n  - name: b"), "YAML tag"),
    "local tag": (GOOD + "description: !shell echo\n", "YAML tag"),
    # depth and size
    "deep flow nesting": (GOOD + "description: " + "[" * 100_000 + "]" * 100_000 + "\n", "nest"),
    "deep block nesting": (GOOD + "engine:\n  extra_args:\n" + "".join(
        "  " * (i + 2) + f"k{i}:\n" for i in range(MAX_DEPTH + 4)) + "  " * (MAX_DEPTH + 6) + "x\n", "nested deeper"),
    "billion laughs": (GOOD + "description: &a [x, x]\nengine:\n  extra_args: {b: [*a, *a, *a]}\n",
                       "anchors and aliases"),
    # duplicates and keys
    "duplicate top-level key": (GOOD + "name: second\n", "duplicate key 'name'"),
    "duplicate key in a flow mapping": (GOOD.replace("{kind: h100-sxm, count: 8}\n  - name: b",
                                                     "{kind: h100-sxm, count: 8, count: 1}\n  - name: b"),
                                        "duplicate key 'count'"),
    "complex key": (GOOD + "? [a, b]\n: x\n", "mapping key"),
    "two documents": (GOOD + "---\n" + GOOD, "one YAML document"),
    # strict types
    "string count": (GOOD.replace("count: 8}\n  - name: b", "count: '8'}\n  - name: b"), "valid integer"),
    "float count": (GOOD.replace("count: 8}\n  - name: b", "count: 8.0}\n  - name: b"), "valid integer"),
    "boolean count": (GOOD.replace("count: 8}\n  - name: b", "count: true}\n  - name: b"), "valid integer"),
    "string port": (GOOD + "engine: {port: '8000'}\n", "valid integer"),
    "yes is not a boolean": (GOOD.replace("count: 8}\n  - name: b",
                                          "count: 8}\n    nics: [{name: ib0, rdma: yes}]\n  - name: b"),
                             "valid boolean"),
    "not a number": (GOOD + "engine: {memory_utilization: .nan}\n", "finite number"),
    # names and addresses
    "injected node name": (GOOD.replace("name: a", f"name: {INJECTED_NAME}"), "DNS-1123"),
    "node name with a space": (GOOD.replace("name: a", "name: 'a b'"), "DNS-1123"),
    "node name with a newline": (GOOD.replace("name: a", 'name: "a\\nb"'), "DNS-1123"),
    "topology name as a path": (GOOD.replace("two-nodes", "../../etc/cron.d/x"), "DNS-1123"),
    "address with a command": (GOOD.replace("10.0.0.1", "'10.0.0.1; touch INJECTED'"), "IP address or host name"),
    "address as an ssh option": (GOOD.replace("10.0.0.1", "-oProxyCommand=touch"), "IP address or host name"),
    "address with a newline": (GOOD.replace("10.0.0.1", '"10.0.0.1\\nHost *"'), "IP address or host name"),
    "address with backticks": (GOOD.replace("node-b.example.com", "'`touch INJECTED`'"), "IP address or host name"),
    "ssh user with a command": (GOOD.replace("address: 10.0.0.1", "address: 10.0.0.1\n    ssh: {user: 'root;id'}"),
                                "user name"),
    "nic name with a command": (GOOD.replace("count: 8}\n  - name: b",
                                             "count: 8}\n    nics: [{name: 'eth0 && id'}]\n  - name: b"),
                                "device name"),
    "engine option with a command": (GOOD + "engine: {extra_args: {'x; touch INJECTED': 1}}\n", "engine option"),
}


@pytest.mark.parametrize("content,fragment", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_topology_is_one_located_line_and_exit_2(tmp_path, content, fragment):
    assert fragment in refused(tmp_path, content)


def test_an_oversized_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "topology.yaml"
    with path.open("wb") as f:
        f.write(GOOD.encode())
        f.truncate(50 * 1024 * 1024)  # 50 MB (sparse)
    done, seconds = nemodeploy(tmp_path, "plan", str(path))
    assert done.returncode == 2 and seconds < 2.0
    assert done.stderr.strip() == f"{path}:1:1: the file is larger than {MAX_BYTES // 2**20} MiB; " \
                                  "a topology is a short YAML file"


@pytest.mark.parametrize("command", ["up", "down", "status", "preflight"])
def test_the_injected_node_name_is_refused_by_every_command_that_loads_a_topology(tmp_path, command):
    rest = refused(tmp_path, GOOD.replace("name: a", f"name: {INJECTED_NAME}"), command)
    assert rest.startswith("nodes[0].name: ")


def test_errors_point_at_the_offending_place(tmp_path):
    rest = refused(tmp_path, GOOD.replace("name: b", "name: B_2"))
    assert rest.startswith("nodes[1].name: 'B_2' is not a valid name")
    path = tmp_path / "topology.yaml"
    done, _ = nemodeploy(tmp_path, "plan", str(path))
    assert done.stderr.startswith(f"{path}:6:11: ")


def test_yaml_12_scalars_keep_on_off_as_words():
    """`reasoning: off` means the word (YAML 1.1 would make it a boolean the schema refuses)."""
    topology = loads(GOOD + "serving: {reasoning: off}\nengine: {port: 0x1F90}\n")
    assert topology.serving.reasoning == "off"
    assert topology.engine.port == 8080


def test_valid_names_and_addresses_load():
    ok = GOOD.replace("10.0.0.1", "'fe80::1'").replace("node-b.example.com", "node-b.example.com.")
    topology = loads(ok.replace("name: two-nodes", "name: x1"))
    assert [n.address for n in topology.nodes] == ["fe80::1", "node-b.example.com."]


def test_a_one_megabyte_topology_loads():
    """Thousands of nodes load (docs/benchmarks.md times planning one: under a second)."""
    node = ("  - name: n{i}\n    address: 10.0.{j}.{k}\n    ssh: {{user: ubuntu, port: 22}}\n"
            "    accelerators: {{kind: h100-sxm, count: 8}}\n"
            "    nics: [{{name: ens1, mtu: 9000, speed_gbps: 400, rdma: true, hca: mlx5_0}}]\n")
    body = "".join(node.format(i=i, j=i // 256, k=i % 256) for i in range(5000))
    text = "name: big\nnodes:\n" + body + "model: {id: nemotron-3-ultra}\n"
    assert 900_000 < len(text) < MAX_BYTES
    assert loads(text).node_count == 5000
