"""vLLM's own flag table (nemodeploy/backends/vllm_flags.json), and an argv checked against it.

The table is extracted from an installed vLLM by scripts/extract_vllm_flags.py (see its
docstring and docs/vllm.md); nemodeploy never imports vLLM. `check_argv` does what vLLM's
parser does with a `vllm serve` argv (unknown options, a value missing or given to a switch,
a value outside the option's choices, ints and floats), plus the later checks vLLM makes
on free-string values: KV cache dtype, Mamba backend, executor, speculative method, and the
reasoning and tool-call parser names, against vLLM's own registries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TABLE_FILE = Path(__file__).with_name("vllm_flags.json")

# free-string options whose values vLLM checks after parsing, and the table's list of what it accepts
_VALUE_SETS = {
    "--kv-cache-dtype": "kv_cache_dtype",
    "--mamba-backend": "mamba_backend",
    "--distributed-executor-backend": "distributed_executor_backend",
    "--reasoning-parser": "reasoning_parser",
    "--tool-call-parser": "tool_call_parser",
}


@dataclass(frozen=True)
class Flag:
    name: str  # the canonical (first) option string
    options: tuple[str, ...]  # every spelling: aliases, --no- / --disable- forms
    takes_value: bool
    nargs: str | int | None
    type: str | None
    choices: tuple[str, ...] | None
    deprecated: bool


@dataclass(frozen=True)
class FlagTable:
    vllm_version: str
    flags: dict[str, Flag]  # every option string (aliases and --no- forms included) -> its flag
    values: dict[str, tuple[str, ...]]
    env: frozenset[str]

    def lookup(self, option: str) -> Flag | None:
        """The flag of `--opt`, `--opt_with_underscores` or `--opt.key` (vLLM's dotted JSON form)."""
        head = option.split(".", 1)[0]
        if head.startswith("--"):
            head = "--" + head[2:].replace("_", "-")
        return self.flags.get(head)

    def accepts(self, kind: str, value: str) -> bool:
        return value in self.values[kind]


@cache
def flag_table(path: Path = TABLE_FILE) -> FlagTable:
    data = json.loads(path.read_text())
    flags: dict[str, Flag] = {}
    for entry in data["flags"]:
        choices = entry["choices"]
        flag = Flag(entry["options"][0], tuple(entry["options"]), entry["takes_value"], entry["nargs"], entry["type"],
                    tuple(map(str, choices)) if choices is not None else None, entry["deprecated"])
        for option in entry["options"]:
            flags[option] = flag
    values = {kind: tuple(v) for kind, v in data["values"].items()}
    return FlagTable(data["vllm_version"], flags, values, frozenset(data["env"]))


def _value_error(table: FlagTable, option: str, flag: Flag, value: str) -> str | None:
    if flag.choices is not None and value not in flag.choices:
        return f"{option} {value!r} is not one vLLM {table.vllm_version} accepts ({', '.join(flag.choices)})"
    kind = _VALUE_SETS.get(flag.name)
    if kind and not table.accepts(kind, value):
        return f"{option} {value!r} is not one vLLM {table.vllm_version} has ({', '.join(table.values[kind])})"
    if flag.type in ("int", "float"):
        try:
            (int if flag.type == "int" else float)(value)
        except ValueError:
            return f"{option} wants a{'n int' if flag.type == 'int' else ' number'}, not {value!r}"
    return None


def check_argv(args: list[str], table: FlagTable | None = None) -> list[str]:
    """What vLLM would reject in the arguments after `vllm serve MODEL`: one sentence per problem."""
    table = table or flag_table()
    problems: list[str] = []
    i = 0
    while i < len(args):
        option = args[i]
        i += 1
        if not option.startswith("-"):
            problems.append(f"unexpected argument {option!r}")
            continue
        option, inline = option.split("=", 1) if "=" in option else (option, None)
        flag = table.lookup(option)
        if flag is None:
            problems.append(f"{option} is not an option of vllm serve {table.vllm_version}")
            continue
        if not flag.takes_value:
            if inline is not None:
                problems.append(f"{option} is a switch and takes no value")
            continue
        if "." in option:  # --speculative-config.method mtp: one key of a JSON option
            values = [inline] if inline is not None else args[i:i + 1]
            i += 0 if inline is not None else 1
            if not values:
                problems.append(f"{option} needs a value")
            continue
        if inline is not None:
            values = [inline]
        else:
            many = flag.nargs in ("+", "*")
            values = []
            while i < len(args) and not args[i].startswith("--") and (many or not values):
                values.append(args[i])
                i += 1
        if not values:
            problems.append(f"{option} needs a value")
        problems += [p for v in values if (p := _value_error(table, option, flag, v))]
    return problems
