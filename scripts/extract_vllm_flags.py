"""Extract vLLM's `vllm serve` flag table into nemodeploy/backends/vllm_flags.json.

Run it with a Python that can import vLLM (a GPU-less install works):

    python -m venv /work/vllm-venv
    VLLM_TARGET_DEVICE=cpu /work/vllm-venv/bin/pip install --no-deps vllm==0.33.0   # + the few deps its parser imports
    VLLM_TARGET_DEVICE=cpu /work/vllm-venv/bin/python scripts/extract_vllm_flags.py

It builds the parser `vllm serve` itself builds (make_arg_parser over FlexibleArgumentParser)
and reads every option from it: names, aliases, whether it takes a value, its choices. The
values the parser takes as free strings but vLLM checks later (KV cache dtype, Mamba backend,
executor, speculative method, the reasoning and tool-call parser registries) are read from the
Literal types, enums and registries vLLM checks them against; the VLLM_* variables from
vllm.envs (vLLM warns about the others). nemodeploy never imports vLLM: it checks every
command it generates against this committed table.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import platform
import sys
import typing
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "nemodeploy" / "backends" / "vllm_flags.json"


def _literal_values(tp) -> list[str]:
    """Every string of a (possibly nested) Literal."""
    values: list[str] = []
    for arg in typing.get_args(tp):
        values += _literal_values(arg) if typing.get_args(arg) else [arg]
    return sorted(set(values))


def _type_name(action: argparse.Action) -> str | None:
    kind = action.type
    if kind in (int, float, str):
        return kind.__name__
    return getattr(kind, "__name__", None) if kind is not None else None


def _flags(parser: argparse.ArgumentParser) -> list[dict]:
    flags = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        choices = action.choices
        if choices is not None:
            choices = sorted({c.value if isinstance(c, enum.Enum) else c for c in choices if c is not None}, key=str)
        flags.append({
            "options": list(action.option_strings),
            "dest": action.dest,
            "takes_value": action.nargs != 0,
            "nargs": action.nargs,
            "type": _type_name(action),
            "choices": choices,
            "deprecated": bool(getattr(action, "deprecated", False)) or "deprecated" in (action.help or "").lower()[:200],
        })
    return sorted(flags, key=lambda f: f["options"][0])


def main() -> int:
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    import vllm
    import vllm.envs
    from vllm.config.cache import CacheDType, MambaDType
    from vllm.config.kernel import MoEBackend
    from vllm.config.mamba import MambaBackendEnum
    from vllm.config.parallel import DataParallelBackend, DistributedExecutorBackend
    from vllm.config.speculative import SpeculativeMethod
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    import torch

    table = {
        "vllm_version": vllm.__version__,
        "source": ("scripts/extract_vllm_flags.py: the parser of `vllm serve` (make_arg_parser(FlexibleArgumentParser())) "
                   "and the Literal types, enums and registries vLLM checks free-string values against, "
                   "read from an imported vLLM"),
        "extracted_with": {"python": platform.python_version(), "torch": torch.__version__,
                           "VLLM_TARGET_DEVICE": os.environ["VLLM_TARGET_DEVICE"]},
        "flags": _flags(make_arg_parser(FlexibleArgumentParser())),
        "values": {
            "kv_cache_dtype": _literal_values(CacheDType),
            "mamba_cache_dtype": _literal_values(MambaDType),
            "mamba_backend": sorted(m.value for m in MambaBackendEnum),
            "moe_backend": _literal_values(MoEBackend),
            "distributed_executor_backend": _literal_values(DistributedExecutorBackend),
            "data_parallel_backend": _literal_values(DataParallelBackend),
            "speculative_method": _literal_values(SpeculativeMethod),
            "reasoning_parser": sorted(ReasoningParserManager.list_registered()),
            "tool_call_parser": sorted(ToolParserManager.list_registered()),
        },
        "env": sorted(vllm.envs.environment_variables),
    }
    OUT.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
    print(f"{OUT}: vllm {table['vllm_version']}, {len(table['flags'])} options", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
