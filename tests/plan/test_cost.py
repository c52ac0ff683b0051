"""`plan --cost`: dollars per million tokens from the estimate and the sourced price table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nemodeploy.cli import main
from nemodeploy.plan.compiler import compile_plan
from nemodeploy.plan.cost import NoPrice, cost, prices
from nemodeploy.topology.loader import load


def test_gb200_cost_prints_dollars_per_mtok_and_break_even():
    result = CliRunner().invoke(main, ["plan", "gb200-4x-nvfp4", "--cost"])
    assert result.exit_code == 0
    assert "per million tokens" in result.stdout and "break-even" in result.stdout


def test_the_cost_json_is_arithmetic_on_the_estimate_and_documented():
    result = CliRunner().invoke(main, ["plan", "gb200-4x-nvfp4", "--cost", "--json"])
    plan = json.loads(result.stdout)
    c, e = plan["cost"], plan["estimate"]
    assert c["dollars_per_hour"] == pytest.approx(4 * prices()["cloud"]["gb200"]["dollars_per_hour"])
    out_per_hour = e["generated_tokens_per_s_total"] * 3600
    assert c["output_dollars_per_mtok"] == pytest.approx(
        c["dollars_per_hour"] * (1 - e["prefill_share"]) / out_per_hour * 1e6)
    assert c["capital_dollars"] == 400_000 and c["break_even_months"] > 0
    assert c["ranked_against"][c["rank"] - 1] == "gb200-4x-nvfp4"
    documented = (Path(__file__).resolve().parents[2] / "docs" / "plan-json.md").read_text()
    for field in c:
        assert f"`{field}`" in documented, f"cost.{field} is not documented"


def test_a_half_busy_deployment_pays_twice_per_token_and_breaks_even_later():
    full = json.loads(CliRunner().invoke(main, ["plan", "spark-4x", "--cost", "--json"]).stdout)["cost"]
    half = json.loads(CliRunner().invoke(main, ["plan", "spark-4x", "--cost", "--json", "--utilization", "0.5"]).stdout)
    half = half["cost"]
    assert half["utilization"] == 0.5
    assert half["output_dollars_per_mtok"] == pytest.approx(2 * full["output_dollars_per_mtok"])
    assert half["break_even_months"] == pytest.approx(2 * full["break_even_months"])


def test_break_even_is_capital_over_the_api_spend_on_the_same_tokens():
    plan = compile_plan(load("spark-4x"))
    c = cost(plan, input_tokens=8192, output_tokens=1024)
    table = prices()
    api = table["api"][0]
    out_h = plan.estimate.generated_tokens_per_s_total * 3600
    monthly = (out_h * 8 * api["input"] + out_h * api["output"]) / 1e6 * table["hours_per_month"]
    assert c.break_even_months == pytest.approx(12_000 / monthly)


def test_an_accelerator_without_a_price_is_one_line_and_exit_2():
    with pytest.raises(NoPrice, match="no price for h200"):
        cost(compile_plan(load("h200-8x-bf16")), input_tokens=8192, output_tokens=1024)
    result = CliRunner().invoke(main, ["plan", "h200-8x-bf16", "--cost"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_every_price_names_its_source():
    table = prices()
    for section in ("cloud", "capital"):
        for kind, entry in table[section].items():
            assert entry["source"].strip(), f"{section}.{kind}"
    assert all(api["source"] for api in table["api"])
