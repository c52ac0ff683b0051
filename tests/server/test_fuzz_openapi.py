"""Fuzzing the real server over its own OpenAPI document (schemathesis: bodies that fit the schema
and bodies that break it): no request gets a 5xx, and /health stays 200 after every one."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from nemodeploy.engine.config import EngineConfig

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 30  # per POST operation and generation mode: about a minute on 2 cores


@pytest.fixture(scope="module")
def fuzzed(latent_dir, start_server):
    # a short context keeps every accepted request to a few decode steps
    config = EngineConfig(model=str(latent_dir), dtype="float32", block_size=8, num_kv_blocks=64, num_mamba_slots=2,
                          max_num_seqs=2, max_num_batched_tokens=64, max_model_len=32, served_model_name="tiny")
    with start_server(config, api_key=KEY) as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(fuzzed):
    return schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json", headers=AUTH)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
def test_no_request_is_a_server_error_and_health_stays_up(fuzzed, api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/health"}
    statuses: dict[str, list[int]] = {}
    for operation in operations:
        has_body = operation.method.upper() == "POST"
        if mode is GenerationMode.NEGATIVE and not has_body:
            continue  # a GET without parameters has nothing to break
        examples = EXAMPLES if has_body else 3

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def no_server_error(case) -> None:
            response = case.call(base_url=fuzzed.url, headers=AUTH, timeout=120)
            statuses.setdefault(case.path, []).append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text)
            assert httpx.get(f"{fuzzed.url}/health", timeout=30).status_code == 200, (case.path, case.body)

        no_server_error()
    if mode is GenerationMode.POSITIVE:  # the fuzzer got past the edge: the engine generated for it
        assert 200 in statuses["/v1/completions"] and 200 in statuses["/v1/chat/completions"], statuses
