"""Validation of every object against the schema Kubernetes would use.

Built-in kinds: kubernetes-validate, strict (unknown fields are errors). RayCluster and
LeaderWorkerSet: the CRDs of KubeRay v1.7.0 and LWS v0.10.0 (upstream/, see SOURCES.md),
and NemoDeployment: its own CRD (k8s/crd.yaml); these are OpenAPI v3 structural schemas,
translated to JSON Schema and made strict the same way (an unknown field is an error here,
where an API server would prune it silently). Pod templates inside custom resources are
also checked as strict built-in PodTemplates.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = Path(__file__).resolve().parent / "upstream"
KUBERNETES = "1.33"
CRDS = {
    ("ray.io/v1", "RayCluster"): UPSTREAM / "ray.io_rayclusters.v1.7.0.yaml",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"):
        UPSTREAM / "leaderworkerset.x-k8s.io_leaderworkersets.v0.10.0.yaml",
    ("nemodeploy.io/v1alpha1", "NemoDeployment"): ROOT / "k8s" / "crd.yaml",
}
_SKIPPED = {"nullable", "format", "description"}


def to_jsonschema(node: dict) -> dict:
    """A structural OpenAPI v3 schema as strict JSON Schema (draft 4)."""
    out: dict = {}
    for key, value in node.items():
        if key in _SKIPPED or key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_jsonschema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def served_schema(crd: dict, version: str) -> dict:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version and entry["served"]:
            return entry["schema"]["openAPIV3Schema"]
    raise LookupError(f"{crd['metadata']['name']} does not serve {version}")


@functools.cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.Draft4Validator:
    crd = yaml.load(CRDS[(api_version, kind)].read_text(), Loader=yaml.CSafeLoader)
    return jsonschema.Draft4Validator(to_jsonschema(served_schema(crd, api_version.rsplit("/", 1)[-1])))


def pod_templates(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    if obj["kind"] == "RayCluster":
        return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec.get("workerGroupSpecs", []))]
    if obj["kind"] == "LeaderWorkerSet":
        group = spec["leaderWorkerTemplate"]
        return [t for t in (group.get("leaderTemplate"), group["workerTemplate"]) if t]
    return []


def validate(obj: dict) -> None:
    """Raise (jsonschema / kubernetes-validate ValidationError) unless `obj` is valid."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRDS:
        error = jsonschema.exceptions.best_match(_crd_validator(*key).iter_errors(obj))
        if error is not None:
            raise error
        for template in pod_templates(obj):
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                          "template": template}, KUBERNETES, strict=True)
        return
    kubernetes_validate.validate(obj, KUBERNETES, strict=True)
