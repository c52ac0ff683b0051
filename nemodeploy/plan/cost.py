"""Dollars per million tokens of a plan, break-even against API prices, and its rank among the profiles.

The hourly cost of the deployment is its accelerators' cloud price (data/prices.yaml), or, where
only a capital cost is known, that capital amortised; it is paid for every hour. It buys the plan's
estimated throughput for the share of the hour the deployment is busy at the planned load
(`utilization`): output tokens carry the decode share of that time, input tokens the prefill
share. Break-even compares the capital with what the same tokens would cost a month at the API's
prices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import yaml

from nemodeploy.plan.types import Cost, Plan


class NoPrice(LookupError):
    """No price for this accelerator in the table; the message says what the table holds."""


@dataclass(frozen=True)
class _Rate:
    basis: str
    dollars_per_hour: float
    capital: float | None
    sources: list[str]


@functools.lru_cache(maxsize=1)
def prices() -> dict:
    return yaml.safe_load(resources.files("nemodeploy.plan").joinpath("data/prices.yaml").read_text())


def _rate(kind: str, count: int) -> _Rate:
    table = prices()
    cloud, capital = table["cloud"].get(kind), table["capital"].get(kind)
    if cloud is None and capital is None:
        known = sorted(set(table["cloud"]) | set(table["capital"]))
        raise NoPrice(f"no price for {kind} in nemodeploy/plan/data/prices.yaml (it has {', '.join(known)})")
    owned = capital["dollars"] * count if capital else None
    sources = [p["source"] for p in (cloud, capital) if p]
    if cloud:
        return _Rate(f"cloud, {count} x ${cloud['dollars_per_hour']:.2f} per accelerator-hour",
                     cloud["dollars_per_hour"] * count, owned, sources)
    months = table["amortisation_months"]
    hourly = owned / (months * table["hours_per_month"])
    return _Rate(f"owned, ${owned:,.0f} over {months} months", hourly, owned, [*sources, table["amortisation_source"]])


def _unranked(plan: Plan, input_tokens: int, output_tokens: int, utilization: float) -> Cost:
    if plan.estimate is None:
        raise NoPrice(f"{plan.topology} does not serve ({plan.verdict}): nothing to price")
    e = plan.estimate
    rate = _rate(plan.accelerator, plan.parallel.world_size)
    table = prices()
    api = table["api"][0]
    out_per_hour = e.generated_tokens_per_s_total * 3600 * utilization
    in_per_hour = out_per_hour * input_tokens / output_tokens
    spend = rate.dollars_per_hour  # the hour is paid whether or not it serves
    out_cost = spend * (1 - e.prefill_share) / out_per_hour * 1e6
    in_cost = spend * e.prefill_share / in_per_hour * 1e6
    api_month = (in_per_hour * api["input"] + out_per_hour * api["output"]) / 1e6 * table["hours_per_month"]
    return Cost(
        basis=rate.basis, dollars_per_hour=rate.dollars_per_hour, input_dollars_per_mtok=in_cost,
        output_dollars_per_mtok=out_cost, utilization=utilization, api=api["name"],
        api_input_dollars_per_mtok=api["input"], api_output_dollars_per_mtok=api["output"],
        capital_dollars=rate.capital, break_even_months=rate.capital / api_month if rate.capital else None,
        rank=0, ranked_against=[], sources=[*rate.sources, api["source"]],
    )


def cost(plan: Plan, *, input_tokens: int, output_tokens: int, utilization: float = 1.0,
         alternatives: dict[str, tuple[Plan, int, int]] | None = None) -> Cost:
    """The plan's cost, ranked by output $/Mtok among the `alternatives` that have a price.

    `alternatives` maps a name to (plan, input tokens, output tokens) of that deployment's workload.
    """
    mine = _unranked(plan, input_tokens, output_tokens, utilization)
    field = {plan.topology: mine.output_dollars_per_mtok}
    for name, (other, other_in, other_out) in (alternatives or {}).items():
        try:
            field[name] = _unranked(other, other_in, other_out, utilization).output_dollars_per_mtok
        except NoPrice:
            continue
    order = sorted(field, key=field.get)
    return mine.model_copy(update={"rank": order.index(plan.topology) + 1, "ranked_against": order})
