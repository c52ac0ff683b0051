"""Each profile's description and comment name the layout `plan` chooses for it."""

from __future__ import annotations

import re

import pytest

from nemodeploy.plan.compiler import compile_plan
from nemodeploy.topology.loader import PROFILE_DIR, load, profile_names


@pytest.mark.parametrize("name", profile_names())
def test_the_layout_a_profile_names_is_the_one_planned(name):
    text = (PROFILE_DIR / f"{name}.yaml").read_text()
    words = "\n".join(line for line in text.splitlines() if line.lstrip().startswith(("#", "description:")))
    plan = compile_plan(load(name), with_alternatives=False)
    description = load(name).description
    if "does not fit" in description:
        assert plan.verdict == "infeasible"
    else:
        assert plan.verdict != "infeasible", plan.reason
    for size, field in (("TP", "tp_size"), ("PP", "pp_size"), ("DP", "dp_size")):
        for claimed in re.findall(rf"\b{size} (\d+)", words):
            assert getattr(plan.parallel, field) == int(claimed), f"{name} says {size} {claimed}"
    if "pipeline parallel" in words:
        assert plan.parallel.pp_size > 1
