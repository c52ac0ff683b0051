"""Topologies for the vLLM backend tests: a built-in profile with some fields changed."""

from __future__ import annotations

import pytest
import yaml

from nemodeploy.plan.compiler import compile_plan
from nemodeploy.topology.loader import PROFILE_DIR, loads


def variant(profile: str, **changes):
    """(topology, plan) of `profile` with `changes` applied; keys are dotted paths (engine__extra_args -> engine.extra_args)."""
    data = yaml.safe_load((PROFILE_DIR / f"{profile}.yaml").read_text())
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        target = data
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    topology = loads(yaml.safe_dump(data), f"{profile}.yaml")
    return topology, compile_plan(topology)


@pytest.fixture
def make():
    return variant
