"""Every kind of bad topology is one `file:line:col: field: message` line on stderr and exit code 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from nemodeploy.cli import main

GOOD = """\
name: two-nodes
nodes:
  - name: a
    address: 10.0.0.1
    accelerators: {kind: h100-sxm, count: 8}
  - name: b
    address: 10.0.0.2
    accelerators: {kind: h100-sxm, count: 8}
model:
  id: nemotron-3-ultra
  precision: bf16
"""

LOCATED = re.compile(r"^(?P<file>[^\n]+\.yaml):(?P<line>\d+):(?P<col>\d+): (?P<rest>.+)$")


def run_plan(tmp_path: Path, text: str) -> tuple[int, str, str]:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["plan", str(path)])
    return result.exit_code, result.stderr.strip(), result.stdout


def expect_error(tmp_path: Path, text: str, line: int, col: int | str, fragment: str) -> str:
    """`col` is a column, or the token whose first character the error must point at on `line`."""
    if isinstance(col, str):
        col = text.splitlines()[line - 1].index(col) + 1
    code, err, _ = run_plan(tmp_path, text)
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    match = LOCATED.match(err)
    assert match, err
    assert (int(match["line"]), int(match["col"])) == (line, col), err
    assert fragment in match["rest"], err
    return match["rest"]


def test_the_good_topology_plans(tmp_path):
    code, err, out = run_plan(tmp_path, GOOD)
    assert code == 0, err
    assert "two-nodes" in out


def test_yaml_syntax_error_points_at_the_problem(tmp_path):
    broken = GOOD.replace("  precision: bf16", "  precision: [bf16")
    expect_error(tmp_path, broken, 12, 1, "YAML syntax")


def test_unknown_field_points_at_the_key(tmp_path):
    typo = GOOD.replace("    address: 10.0.0.2", "    adress: 10.0.0.2")
    rest = expect_error(tmp_path, typo, 7, 5, "unknown field (did you mean 'address'?)")
    assert rest.startswith("nodes[1].adress: ")


def test_wrong_type_points_at_the_value(tmp_path):
    wrong = GOOD.replace("{kind: h100-sxm, count: 8}\n  - name: b", "{kind: h100-sxm, count: eight}\n  - name: b")
    rest = expect_error(tmp_path, wrong, 5, "eight", "integer")
    assert rest.startswith("nodes[0].accelerators.count: ")


def test_unknown_accelerator_lists_the_known_ones(tmp_path):
    unknown = GOOD.replace("{kind: h100-sxm, count: 8}\n  - name: b", "{kind: h800, count: 8}\n  - name: b")
    rest = expect_error(tmp_path, unknown, 5, "h800", "unknown accelerator 'h800'")
    assert "h100-sxm" in rest and "mi300x" in rest


def test_impossible_parallel_sizes_name_the_rule(tmp_path):
    impossible = GOOD + "engine:\n  parallel:\n    tp_size: 3\n"
    rest = expect_error(tmp_path, impossible, 14, "3", "tp_size")
    assert rest.startswith("engine.parallel.tp_size: ")


def test_tp_that_does_not_divide_the_heads(tmp_path):
    twelve = GOOD.replace("count: 8}\n  - name: b", "count: 12}\n  - name: b").replace("count: 8}\nmodel", "count: 12}\nmodel")
    rest = expect_error(tmp_path, twelve + "engine:\n  parallel:\n    tp_size: 12\n", 14, "12", "64 attention heads")
    assert rest.startswith("engine.parallel.tp_size: ")


def test_sizes_that_do_not_multiply_to_the_gpu_count(tmp_path):
    impossible = GOOD + "engine:\n  kind: vllm\n  parallel:\n    pp_size: 3\n"
    rest = expect_error(tmp_path, impossible, 15, "3", "16 GPUs")
    assert rest.startswith("engine.parallel.pp_size: ")


def test_more_gpus_asked_than_the_nodes_have(tmp_path):
    greedy = GOOD + "engine:\n  kind: vllm\n  parallel:\n    tp_size: 8\n    pp_size: 4\n"
    rest = expect_error(tmp_path, greedy, 15, "8", "the topology has 16 GPUs")
    assert "32" in rest


def test_more_gpus_per_node_than_the_hardware_allows(tmp_path):
    too_many = GOOD.replace("{kind: h100-sxm, count: 8}\n  - name: b", "{kind: h100-sxm, count: 100}\n  - name: b")
    expect_error(tmp_path, too_many, 5, "100}", "less than or equal to 72")


def test_missing_required_field(tmp_path):
    no_model = GOOD.split("model:")[0]
    rest = expect_error(tmp_path, no_model, 1, 1, "Field required")
    assert rest.startswith("model: ")


def test_duplicate_node_names(tmp_path):
    twice = GOOD.replace("  - name: b", "  - name: a")
    expect_error(tmp_path, twice, 1, 1, "node name 'a' appears twice")


def test_mixed_accelerator_kinds(tmp_path):
    mixed = GOOD.replace("{kind: h100-sxm, count: 8}\nmodel", "{kind: h200, count: 8}\nmodel")
    expect_error(tmp_path, mixed, 3, 3, "mix accelerator kinds")


def test_unknown_model_says_how_to_give_one(tmp_path):
    unknown = GOOD.replace("id: nemotron-3-ultra", "id: acme/unknown-model")
    rest = expect_error(tmp_path, unknown, 10, 7, "acme/unknown-model")
    assert "config.json" in rest


def test_a_top_level_list_is_not_a_topology(tmp_path):
    expect_error(tmp_path, "- a\n- b\n", 1, 1, "a topology is a YAML mapping")


def test_missing_file_or_profile(tmp_path):
    result = CliRunner().invoke(main, ["plan", "no-such-profile"])
    assert result.exit_code == 2
    assert result.stderr.startswith("no-such-profile:1:1: no such file or profile; profiles: ")
    assert "local" in result.stderr


@pytest.mark.parametrize("flag", ["--json", None])
def test_errors_do_not_depend_on_the_output_format(tmp_path, flag):
    path = tmp_path / "t.yaml"
    path.write_text(GOOD.replace("count: 8}\n  - name: b", "count: 0}\n  - name: b"))
    result = CliRunner().invoke(main, ["plan", str(path), *([flag] if flag else [])])
    assert result.exit_code == 2
    assert LOCATED.match(result.stderr.strip())


def test_the_embedded_engine_keeps_experts_inside_a_replica(tmp_path):
    wide = GOOD + "engine:\n  kind: embedded\n  parallel: {tp_size: 8, dp_size: 2, ep_size: 16}\n"
    rest = expect_error(tmp_path, wide, 14, "8", "ep_size must be 1 or tp_size (8)")
    assert "needs engine.kind: vllm" in rest
