"""The NemoDeployment CRD: generated from the pydantic schema, structural, and what k8s/crd.yaml holds."""

from __future__ import annotations

import jsonschema
import pytest
import yaml
from conftest import gpu_profiles
from k8s_schemas import ROOT, validate

from nemodeploy.k8s.crd import PRINTER_COLUMNS, crd
from nemodeploy.k8s.spec import DeploymentSpec
from nemodeploy.topology.loader import resolve
from nemodeploy.topology.schema import Topology

CRD_FILE = ROOT / "k8s" / "crd.yaml"


def schema() -> dict:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_the_crd_file_is_the_generated_one():
    assert yaml.safe_load(CRD_FILE.read_text()) == crd(), \
        "k8s/crd.yaml is stale: nemodeploy render k8s --crd > k8s/crd.yaml"


def test_the_crd_is_a_valid_customresourcedefinition():
    validate(crd())


def _walk(node: dict, path: str):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _walk(node[key], f"{path}[{key}]")


def test_the_schema_is_structural():
    """What the API server demands of a CRD schema (apiextensions structural schema rules)."""
    for path, node in _walk(schema(), "openAPIV3Schema"):
        assert "$ref" not in node and "$defs" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path}: no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert "anyOf" not in node or all("type" not in v for v in node["anyOf"]), path
        if node.get("exclusiveMinimum") is not None:
            assert isinstance(node["exclusiveMinimum"], bool), path


def test_spec_topology_is_every_field_of_the_topology_schema():
    topology = schema()["properties"]["spec"]["properties"]["topology"]
    assert set(topology["properties"]) == set(Topology.model_fields)
    engine = topology["properties"]["engine"]["properties"]
    assert set(engine) == set(Topology.model_fields["engine"].annotation.model_fields)
    spec = schema()["properties"]["spec"]
    assert set(spec["required"]) == {"topology", "modelVolume"}
    assert set(spec["properties"]) == {f.alias or n for n, f in DeploymentSpec.model_fields.items()}


@pytest.mark.parametrize("profile", gpu_profiles())
def test_every_profile_as_a_nemodeployment_validates(profile):
    topology = yaml.safe_load(resolve(profile).read_text())
    validate({"apiVersion": "nemodeploy.io/v1alpha1", "kind": "NemoDeployment", "metadata": {"name": "x"},
              "spec": {"topology": topology, "modelVolume": {"persistentVolumeClaim": "models"}}})


@pytest.mark.parametrize("mutation, where", [
    (lambda s: s["topology"]["serving"].update(concurrency="many"), "concurrency"),
    (lambda s: s["topology"]["nodes"][0]["accelerators"].update(count=0), "count"),
    (lambda s: s.pop("modelVolume"), "modelVolume"),
    (lambda s: s["topology"]["engine"].update(kind="tgi"), "kind"),
    (lambda s: s.update(runtime="slurm"), "runtime"),
    (lambda s: s["topology"]["model"].update(precison="bf16"), "precison"),
])
def test_the_schema_rejects_what_pydantic_rejects(mutation, where):
    spec = {"topology": yaml.safe_load(resolve("h200-8x-bf16").read_text()),
            "modelVolume": {"persistentVolumeClaim": "models"}}
    mutation(spec)
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate({"apiVersion": "nemodeploy.io/v1alpha1", "kind": "NemoDeployment", "metadata": {"name": "x"},
                  "spec": spec})
    assert where in str(caught.value)
    with pytest.raises(ValueError):
        DeploymentSpec.model_validate(spec)


def test_printer_columns_read_fields_the_status_schema_has():
    status = schema()["properties"]["status"]["properties"]
    for column in PRINTER_COLUMNS:
        path = column["jsonPath"]
        if path.startswith(".status."):
            first = path.split(".")[2].split("[")[0]
            assert first in status, path
    assert set(status["plan"]["properties"]) >= {"verdict", "layout"}
    assert crd()["spec"]["versions"][0]["subresources"] == {"status": {}}
