"""Every manifest in k8s/ validates, the kustomization holds them all, and the operator's RBAC
grants exactly what it uses: the verbs of its Api on the kinds it renders, and kopf's needs."""

from __future__ import annotations

import pytest
import yaml
from conftest import rendered
from k8s_schemas import ROOT, validate

from nemodeploy.k8s import render
from nemodeploy.k8s.reconcile import parse
from nemodeploy.topology.loader import load

K8S = ROOT / "k8s"
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_manifest_validates(name):
    docs = documents(name)
    assert docs
    for doc in docs:
        validate(doc)


def test_the_kustomization_applies_the_crd_the_operator_and_its_rbac():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {"crd.yaml", "operator.yaml", "rbac.yaml"}
    image = documents("operator.yaml")[1]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[0] in {i["name"] for i in kustomization["images"]}


def test_the_example_renders_into_valid_objects():
    (example,) = documents("example-nemodeployment.yaml")
    spec = parse(example["spec"])
    dep = render.deployment(example["metadata"]["name"], "default", spec, render.compile_spec(spec))
    for obj in render.objects(dep):
        validate(obj)


def _rules() -> dict[tuple[str, str], set[str]]:
    role = next(d for d in documents("rbac.yaml") if d["kind"] == "ClusterRole")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_rbac_grants_the_operator_what_it_uses_and_no_more():
    granted = _rules()
    used = {}
    for runtime in ("kuberay", "leaderworkerset"):
        _, objs = rendered(load("h100-16x-bf16"), runtime)
        for obj in objs.values():
            group = obj["apiVersion"].rpartition("/")[0]
            used[(group, obj["kind"].lower() + "s")] = {"get", "create", "update"}  # Api.get / create / replace
    used[("nemodeploy.io", "nemodeployments")] = {"get", "list", "watch", "patch"}  # kopf watches and annotates
    used[("nemodeploy.io", "nemodeployments/status")] = {"get", "patch"}  # kopf patches the status
    used[("", "events")] = {"create"}
    used[("", "namespaces")] = used[("apiextensions.k8s.io", "customresourcedefinitions")] = {"list", "watch"}
    assert granted == used
    assert not any("delete" in verbs for verbs in granted.values()), "deletion is the garbage collector's"
