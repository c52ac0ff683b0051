"""`nemodeploy render k8s`: the operator's objects without a cluster, with the base dependencies only."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from click.testing import CliRunner
from k8s_schemas import ROOT, validate

from nemodeploy.cli import main
from nemodeploy.k8s.crd import crd

NO_EXTRAS = "import sys\nfor m in ('torch', 'ray', 'kopf', 'kubernetes', 'paramiko'): sys.modules[m] = None\n"


def bare(*args: str) -> subprocess.CompletedProcess:
    """The command in a fresh interpreter where torch, ray, kopf and kubernetes cannot be imported."""
    code = NO_EXTRAS + "from nemodeploy.cli import main\nmain(sys.argv[1:], prog_name='nemodeploy')"
    return subprocess.run([sys.executable, "-c", code, "render", "k8s", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def cli(*args: str):
    """The command in this process (exit_code, stdout, stderr like a CompletedProcess)."""
    result = CliRunner().invoke(main, ["render", "k8s", *args])
    result.returncode = result.exit_code
    return result


def test_writes_one_valid_file_per_object_without_the_heavy_extras(tmp_path):
    result = bare("h100-16x-bf16", "--runtime", "leaderworkerset", "--namespace", "llm", "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["00-configmap-h100-16x-bf16-plan.yaml", "01-service-h100-16x-bf16.yaml",
                     "02-leaderworkerset-h100-16x-bf16.yaml"]
    for name in files:
        obj = yaml.safe_load((tmp_path / "out" / name).read_text())
        assert obj["metadata"]["namespace"] == "llm"
        validate(obj)
    assert result.stderr.strip() == f"wrote 3 objects to {tmp_path / 'out'}"


def test_stdout_is_a_yaml_stream_or_json_of_the_same_objects():
    stream = cli("spark-4x", "--model-host-path", "/srv/hf")
    as_json = cli("spark-4x", "--model-host-path", "/srv/hf", "--json")
    assert stream.returncode == as_json.returncode == 0, stream.stderr + as_json.stderr
    objs = list(yaml.safe_load_all(stream.stdout))
    assert objs == json.loads(as_json.stdout)
    assert [o["kind"] for o in objs] == ["ConfigMap", "Service", "RayCluster"]


def test_a_nemodeployment_manifest_renders_from_its_own_spec():
    result = cli(str(ROOT / "k8s" / "example-nemodeployment.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    objs = json.loads(result.stdout)
    assert objs[2]["kind"] == "LeaderWorkerSet" and objs[2]["metadata"]["name"] == "ultra-h100"


def test_crd_prints_the_checked_in_crd():
    result = cli("--crd")
    assert result.returncode == 0 and yaml.safe_load(result.stdout) == crd()


def test_failures_are_one_line_with_the_documented_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: nemodeploy.io/v1alpha1\nkind: NemoDeployment\nmetadata: {name: x}\n"
                   "spec: {topology: {name: x, nodes: [], model: {id: m}}, modelVolume: {hostPath: /m}}\n")
    cases = [
        (cli("h100-8x-bf16"), 1, "h100-8x-bf16: nothing to deploy: 1.10 TB of bf16 weights do not fit"),
        (cli("no-such-profile"), 2, "no-such-profile:1:1: no such file or profile"),
        (cli(str(bad)), 2, f"{bad}: spec.topology.nodes: List should have at least 1 item"),
        (cli("local"), 2, "local: image: the embedded engine has no published image"),
        (cli("b200-8x-bf16", "--name", "Not_A_Name"), 2, "name 'Not_A_Name': not a Kubernetes name"),
        (cli(), 2, "nemodeploy render k8s: give a topology"),
    ]
    for result, code, start in cases:
        assert result.returncode == code, result.stderr
        assert result.stderr.startswith(start), result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
