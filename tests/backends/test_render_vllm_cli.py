"""`nemodeploy render vllm`: each node's launch as text or JSON; bad input and refusals are one line, exit 2."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from nemodeploy.cli import main
from nemodeploy.topology.loader import PROFILE_DIR


def run(*args: str):
    return CliRunner().invoke(main, ["render", "vllm", *args])


def test_json_lists_every_node_head_first_with_native_and_docker_forms():
    result = run("spark-4x", "--json")
    assert result.exit_code == 0, result.output
    rendered = json.loads(result.output)
    nodes = rendered["nodes"]
    assert rendered["vllm"] == "0.33.0" and [n["node_rank"] for n in nodes] == [0, 1, 2, 3]
    assert [n["role"] for n in nodes] == ["head", "ray worker", "ray worker", "ray worker"]
    head, worker = nodes[0], nodes[2]
    assert head["argv"][0][:2] == ["ray", "start"] and head["argv"][1][:2] == ["vllm", "serve"]
    assert [argv[:2] for argv in worker["argv"]] == [["ray", "start"]]
    assert f"--address={head['address']}:6379" in worker["argv"][0]
    assert worker["env"]["VLLM_HOST_IP"] == worker["address"] and worker["env"]["NCCL_SOCKET_IFNAME"] == "enp1s0f0np0"
    for flag in ("--ipc=host", "--network=host", "--shm-size=16g", "memlock=-1", "stack=67108864",
                 "vllm/vllm-openai:v0.33.0", f"-e VLLM_HOST_IP={worker['address']}"):
        assert flag in worker["docker"], flag
    assert worker["docker"].endswith("--block")


def test_mp_launcher_runs_vllm_on_every_node():
    result = run("spark-4x", "--launcher", "mp")
    assert result.exit_code == 0, result.output
    assert result.output.count("vllm serve") == 4 and "ray start" not in result.output
    nodes = json.loads(run("spark-4x", "--launcher", "mp", "--json").output)["nodes"]
    assert [n["role"] for n in nodes] == ["head", "headless", "headless", "headless"]
    assert [("--headless" in n["argv"][0]) for n in nodes] == [False, True, True, True]


def test_amd_gpus_get_their_devices_and_image():
    docker = json.loads(run("mi300x-8x-bf16", "--json").output)["nodes"][0]["docker"]
    assert "--device /dev/kfd --device /dev/dri" in docker and "rocm/vllm:v0.33.0" in docker and "--gpus" not in docker


def test_refusals_and_what_cannot_launch_are_one_line(tmp_path):
    data = yaml.safe_load((PROFILE_DIR / "h200-8x-bf16.yaml").read_text())
    data["engine"]["extra_args"] = {"swap-space": 16}
    path = tmp_path / "swap.yaml"
    path.write_text(yaml.safe_dump(data))
    cases = [((str(path),), 2, "refused: --swap-space was removed"),
             (("local",), 2, "engine.kind is embedded"),
             (("h100-8x-bf16",), 1, "nothing to launch"),
             (("no-such-profile",), 2, "")]
    for args, code, text in cases:
        result = run(*args)
        assert result.exit_code == code, (args, result.output)
        assert text in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_a_local_checkpoint_is_the_model_argument_and_mounted_read_only(tmp_path):
    from nemodeploy.models.specs import SPECS_DIR

    model = tmp_path / "Nemotron-3-Nano"
    model.mkdir()
    (model / "config.json").write_text((SPECS_DIR / "nemotron-3-nano.json").read_text())
    data = yaml.safe_load((PROFILE_DIR / "h200-8x-bf16.yaml").read_text())
    data["model"] = {"path": str(model), "precision": "bf16"}
    path = tmp_path / "nano.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run(str(path), "--json")
    assert result.exit_code == 0, result.output
    head = json.loads(result.output)["nodes"][0]
    assert head["argv"][0][2] == str(model)
    assert head["argv"][0][head["argv"][0].index("--served-model-name") + 1] == "Nemotron-3-Nano"
    assert f"-v {model}:{model}:ro" in head["docker"]
