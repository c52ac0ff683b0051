"""The NemoDeployment CRD, its openAPIV3Schema generated from the pydantic models of spec.py.

Kubernetes wants a *structural* schema in OpenAPI v3.0 terms, pydantic writes JSON Schema
2020-12; `structural` translates: `$ref`s inlined, `anyOf [X, null]` to X with `nullable`,
`const` to a one-value `enum`, numeric `exclusiveMinimum` to `minimum` plus the boolean,
a field of any type to `x-kubernetes-preserve-unknown-fields`, and `additionalProperties:
false` dropped (Kubernetes forbids it beside `properties`: unknown fields are pruned, and
`kubectl apply` rejects them under its default strict field validation). Defaults are left
to pydantic, which the operator applies, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any

from nemodeploy.k8s.spec import GROUP, KIND, PLURAL, VERSION, DeploymentSpec, DeploymentStatus

_DROPPED = {"title", "default", "examples", "$defs"}
_PRESERVE = {"x-kubernetes-preserve-unknown-fields": True}

PRINTER_COLUMNS = [
    {"name": "Verdict", "type": "string", "jsonPath": ".status.plan.verdict"},
    {"name": "Layout", "type": "string", "jsonPath": ".status.plan.layout"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="ClusterReady")].status'},
    {"name": "Serving", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Serving")].status'},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One pydantic JSON Schema (with its `$defs`) as a Kubernetes structural schema."""
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    variants = schema.get("anyOf")
    if variants is not None:
        rest = [v for v in variants if v.get("type") != "null"]
        outer = {k: v for k, v in schema.items() if k != "anyOf"}
        if len(rest) == 1:
            nullable = len(rest) < len(variants)
            return {**structural({**rest[0], **outer}, defs), **({"nullable": True} if nullable else {})}
        return {**_keep(outer), **_PRESERVE}  # a union of shapes: Kubernetes cannot type it
    out = _keep(schema)
    if "const" in schema:
        out["enum"] = [schema["const"]]
        out.pop("const")
    if "exclusiveMinimum" in schema:
        out.update(minimum=schema["exclusiveMinimum"], exclusiveMinimum=True)
    if "exclusiveMaximum" in schema:
        out.update(maximum=schema["exclusiveMaximum"], exclusiveMaximum=True)
    kind = schema.get("type")
    if kind is None:
        return {**out, **_PRESERVE}
    if kind == "array":
        out["items"] = structural(schema.get("items", {}), defs)
    if kind == "object":
        out.pop("additionalProperties", None)
        if "properties" in schema:
            out["properties"] = {name: structural(sub, defs) for name, sub in schema["properties"].items()}
        else:
            extra = schema.get("additionalProperties", {})
            if isinstance(extra, dict) and extra.get("type"):
                out["additionalProperties"] = structural(extra, defs)
            else:
                out.update(_PRESERVE)
    return out


def _keep(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in _DROPPED}


def resource_schema() -> dict[str, Any]:
    """The openAPIV3Schema of one NemoDeployment object."""
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural(DeploymentSpec.model_json_schema(by_alias=True, mode="validation")),
            "status": structural(DeploymentStatus.model_json_schema(by_alias=True, mode="serialization")),
        },
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object (k8s/crd.yaml is this, written by `nemodeploy render k8s --crd`)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": KIND.lower(), "listKind": f"{KIND}List",
                      "shortNames": ["nemo"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": resource_schema()},
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }
