"""Every profile's vLLM command through vLLM's own parser, where vLLM is installed.

vLLM is too heavy for CI (it pins its own torch); the flag-table tests cover CI. With vLLM
importable, either in this interpreter or in the one NEMODEPLOY_VLLM_PYTHON names (a GPU-less
`VLLM_TARGET_DEVICE=cpu` install works, see docs/vllm.md), each argv goes through
make_arg_parser + validate_parsed_serve_args, and its parser names through vLLM's registries.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from nemodeploy.backends.vllm import VllmError, launch_nodes, serve_argv
from nemodeploy.plan.compiler import compile_plan
from nemodeploy.topology.loader import load, profile_names

PARSE = r"""
import json, sys
from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.reasoning import ReasoningParserManager
from vllm.tool_parsers import ToolParserManager
from vllm.utils.argparse_utils import FlexibleArgumentParser
import vllm
failures = []
commands = json.load(sys.stdin)
for label, argv in commands.items():
    try:
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        validate_parsed_serve_args(args)
        assert args.reasoning_parser in ReasoningParserManager.list_registered(), args.reasoning_parser
        assert args.tool_call_parser in ToolParserManager.list_registered(), args.tool_call_parser
    except BaseException as err:
        failures.append(f"{label}: {type(err).__name__}: {err}")
print(json.dumps({"version": vllm.__version__, "parsed": len(commands), "failures": failures}))
"""


def _vllm_python() -> str | None:
    named = os.environ.get("NEMODEPLOY_VLLM_PYTHON")
    if named:
        return named
    return sys.executable if importlib.util.find_spec("vllm") else None


def _commands() -> dict[str, list[str]]:
    commands = {}
    for name in profile_names():
        topology = load(name)
        plan = compile_plan(topology, with_alternatives=False)
        if topology.engine.kind != "vllm" or not plan.fits:
            continue
        for launcher in ("ray", "mp"):
            for rank in range(len(launch_nodes(topology, plan)) if launcher == "mp" else 1):
                try:
                    commands[f"{name}/{launcher}/{rank}"] = serve_argv(topology, plan, node_rank=rank, launcher=launcher)[2:]
                except VllmError:
                    pass  # a launcher the validator refuses for this layout
    return commands


def test_every_profile_command_parses_with_vllm_itself():
    python = _vllm_python()
    if python is None:
        pytest.skip("vLLM is not installed here; set NEMODEPLOY_VLLM_PYTHON to an interpreter that has it")
    commands = _commands()
    env = {**os.environ, "VLLM_TARGET_DEVICE": os.environ.get("VLLM_TARGET_DEVICE", "cpu")}
    done = subprocess.run([python, "-c", PARSE], input=json.dumps(commands), capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"] == "0.33.0"
    assert result["failures"] == [] and result["parsed"] == len(commands) > 0
