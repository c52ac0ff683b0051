"""vLLM's flag table, extracted from vLLM 0.33 itself, and argv checked against it the way vLLM would."""

from __future__ import annotations

import json

from nemodeploy.backends.vllm_table import TABLE_FILE, check_argv, flag_table


def test_the_table_says_which_vllm_it_was_read_from_and_how():
    data = json.loads(TABLE_FILE.read_text())
    assert data["vllm_version"] == "0.33.0" and "make_arg_parser" in data["source"]
    table = flag_table()
    assert table.lookup("--tensor-parallel-size") is table.lookup("-tp")
    assert table.lookup("--max_num_seqs").name == "--max-num-seqs"  # vLLM accepts underscores
    assert table.lookup("--speculative-config.method").name == "--speculative-config"
    assert "nemotron_v3" in table.values["reasoning_parser"] and "qwen3_coder" in table.values["tool_call_parser"]
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in table.env


def test_a_valid_command_has_no_problem():
    assert check_argv(["--tensor-parallel-size", "8", "--enable-expert-parallel", "--kv-cache-dtype", "fp8",
                       "--served-model-name", "a", "b", "--speculative-config", '{"method": "mtp"}',
                       "--max-num-seqs=16", "--disable-prefix-caching", "--speculative_config.num_speculative_tokens",
                       "3"]) == []


def test_what_vllm_rejects_is_named():
    cases = {
        ("--swap-space", "16"): "--swap-space is not an option of vllm serve 0.33.0",
        ("--kv-cache-dtype", "fp4"): "--kv-cache-dtype 'fp4' is not one vLLM 0.33.0 has",
        ("--mamba-ssm-cache-dtype", "fp8"): "--mamba-ssm-cache-dtype 'fp8' is not one vLLM 0.33.0 accepts",
        ("--moe-backend", "flashinfer"): "--moe-backend 'flashinfer' is not one vLLM 0.33.0 accepts",
        ("--mamba-backend", "cuda"): "--mamba-backend 'cuda' is not one vLLM 0.33.0 has",
        ("--reasoning-parser", "super_v3"): "--reasoning-parser 'super_v3' is not one vLLM 0.33.0 has",
        ("--tool-call-parser", "nemotron_json"): "--tool-call-parser 'nemotron_json' is not one vLLM 0.33.0 has",
        ("--max-num-seqs", "many"): "--max-num-seqs wants an int, not 'many'",
        ("--enable-expert-parallel=1",): "--enable-expert-parallel is a switch and takes no value",
        ("--max-model-len",): "--max-model-len needs a value",
        ("stray",): "unexpected argument 'stray'",
    }
    for argv, problem in cases.items():
        problems = check_argv(list(argv))
        assert problems and problems[0].startswith(problem), (argv, problems)
