"""Fixtures for the Kubernetes tests: deployment specs from the profiles, and the API stand-in."""

from __future__ import annotations

import pytest

from nemodeploy.k8s import render
from nemodeploy.k8s.spec import DeploymentSpec
from nemodeploy.plan.compiler import compile_plan
from nemodeploy.topology.loader import load, profile_names

RUNTIMES = ("kuberay", "leaderworkerset")


def gpu_profiles() -> list[str]:
    return [name for name in profile_names() if load(name).nodes[0].accelerators.kind != "cpu"]


def fitting_profiles() -> list[str]:
    return [name for name in gpu_profiles() if compile_plan(load(name), with_alternatives=False).fits]


def make_spec(topology, runtime: str | None = "kuberay", **fields) -> DeploymentSpec:
    values = {"topology": topology, "runtime": runtime, "modelVolume": {"persistentVolumeClaim": "models"}, **fields}
    return DeploymentSpec.model_validate(values)


def rendered(topology, runtime: str | None = "kuberay", name: str = "nemo", **fields):
    """(deployment, objects by kind) for `topology` as a NemoDeployment."""
    spec = make_spec(topology, runtime, **fields)
    dep = render.deployment(name, "serving", spec, render.compile_spec(spec))
    return dep, {obj["kind"]: obj for obj in render.objects(dep)}


@pytest.fixture
def api():
    from k8s_apistore import InMemoryApi

    return InMemoryApi()
