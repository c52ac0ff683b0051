"""One reconcile of a NemoDeployment: spec -> plan -> owned objects -> status. Idempotent.

`reconcile(api, body, now)` reads the resource, compiles the plan, creates or replaces
what it owns (the ConfigMap, the Service, the RayCluster or LeaderWorkerSet, each with an
owner reference so that deleting the NemoDeployment lets Kubernetes' garbage collector
remove them), looks at how far the workload got, and returns the status fields that
changed: an empty dict when nothing did. All state lives in the resource's status and in
the objects themselves, so any reconcile may be the first one after a restart.

A spec that is invalid or a plan that does not fit is a `Planned=False` condition and one
Warning event (when the condition first says so), never an exception: raising would make
kopf retry forever on input only the user can change. Existing objects are then left as
they are: a bad edit does not tear down a serving deployment.

An object is written only when what would be applied differs from what was applied last
(a hash in an annotation) or from what is there; a second reconcile of an unchanged
resource writes nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json

from pydantic import ValidationError

from nemodeploy.k8s import kuberay, lws, render
from nemodeploy.k8s.api import Api
from nemodeploy.k8s.pods import Deployment, RenderError
from nemodeploy.k8s.spec import API_VERSION, KIND, Condition, DeploymentSpec

APPLIED = "nemodeploy.io/applied-hash"
READINESS = {"RayCluster": kuberay.pods_ready, "LeaderWorkerSet": lws.pods_ready}


class SpecProblem(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _field(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def parse(spec: dict) -> DeploymentSpec:
    try:
        return DeploymentSpec.model_validate(spec)
    except ValidationError as err:
        first = err.errors()[0]
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise SpecProblem("InvalidSpec", f"spec.{_field(first['loc'])}: {first['msg']}{more}") from None


def plan_for(name: str, namespace: str, spec: DeploymentSpec):
    """(plan, deployment, its objects); the last two None when the plan does not fit."""
    from nemodeploy.plan.compiler import PlanInputError

    try:
        plan = render.compile_spec(spec)
    except PlanInputError as err:
        raise SpecProblem("InvalidSpec", f"spec.topology.{_field(err.field)}: {err}") from None
    if not plan.fits:
        return plan, None, None
    try:
        dep = render.deployment(name, namespace, spec, plan)
        return plan, dep, render.objects(dep)
    except RenderError as err:
        raise SpecProblem("CannotRender", str(err)) from None


def owned(obj: dict, owner: dict) -> dict:
    """`obj` with the owner reference that makes it garbage-collected with `owner`, and its hash."""
    obj = copy.deepcopy(obj)
    meta = owner["metadata"]
    obj["metadata"]["ownerReferences"] = [{"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"],
                                           "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    obj["metadata"].setdefault("annotations", {})[APPLIED] = digest
    return obj


def contains(have, want) -> bool:
    """Whether `want` is all there in `have` (what the server added, defaults and the like, is ignored)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(map(contains, have, want))
    return have == want


def apply(api: Api, owner: dict, obj: dict) -> str | None:
    """Create or replace one owned object; the verb used, None when it was already so."""
    want = owned(obj, owner)
    meta = want["metadata"]
    have = api.get(want["apiVersion"], want["kind"], meta["namespace"], meta["name"])
    if have is None:
        api.create(want)
        return "Created"
    if contains(have, want):
        return None
    meta["resourceVersion"] = have["metadata"].get("resourceVersion")
    api.replace(want)
    return "Updated"


def _condition(old: dict[str, dict], type_: str, ok: bool | None, reason: str, message: str, now: str,
               generation: int | None) -> Condition:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    previous = old.get(type_, {})
    since = previous.get("lastTransitionTime") if previous.get("status") == status else None
    return Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=since or now,
                     observed_generation=generation)


def _observe(api: Api, dep: Deployment) -> tuple[dict, tuple[int, int] | None]:
    workload = render.workload(dep)
    have = api.get(workload["apiVersion"], workload["kind"], dep.namespace, dep.name)
    if have is None:
        return workload, None
    return have, READINESS[workload["kind"]](have)


def reconcile(api: Api, body: dict, now: str) -> dict:
    """Bring the owned objects to what the spec says; the status fields that changed (camelCase)."""
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta.get("namespace", "default"), meta.get("generation")
    old_status = body.get("status") or {}
    old = {c["type"]: c for c in old_status.get("conditions", [])}
    status = {"conditions": old_status.get("conditions", []), "observedGeneration": generation}

    def condition(type_: str, ok: bool | None, reason: str, message: str = "") -> dict:
        return _condition(old, type_, ok, reason, message, now, generation).model_dump(by_alias=True, exclude_none=True)

    try:
        spec = parse(body.get("spec") or {})
        plan, dep, objects = plan_for(name, namespace, spec)
    except SpecProblem as problem:
        planned = condition("Planned", False, problem.reason, str(problem))
        _warn_on_change(api, body, old, planned)
        return _changes(old_status, {**status, "conditions": _merge(status["conditions"], [planned])})

    summary = render.summary(plan)
    status["plan"] = summary.model_dump(by_alias=True)
    if dep is None:
        planned = condition("Planned", False, "DoesNotFit", plan.reason)
        _warn_on_change(api, body, old, planned)
        return _changes(old_status, {**status, "conditions": _merge(status["conditions"], [planned])})

    for obj in objects:
        verb = apply(api, body, obj)
        if verb:
            api.event(body, "Normal", verb, f"{verb.lower()} {obj['kind']} {obj['metadata']['name']}")
    workload, counts = _observe(api, dep)
    ready, desired = counts or (0, None)
    cluster_ok = counts is not None and ready >= desired
    serving = cluster_ok and api.healthy(render.endpoint(dep).removesuffix("/v1") + "/health")
    # Degraded: it was up (or already degraded) and is not fully up now; cleared once it is
    was_up = any(old.get(t, {}).get("status") == "True" for t in ("ClusterReady", "Serving", "Degraded"))
    lost = [t for t, ok in (("ClusterReady", cluster_ok), ("Serving", serving)) if not ok] if was_up else []
    conditions = [
        condition("Planned", True, "Planned", summary.layout or ""),
        condition("ClusterReady", cluster_ok, "AllPodsReady" if cluster_ok else "Waiting",
                  f"{ready}/{desired} pods ready" if desired is not None else f"no {workload['kind']} yet"),
        condition("Serving", serving, "Healthy" if serving else "NotServing",
                  "the engine's /health answers" if serving else "the engine's /health does not answer yet"),
        condition("Degraded", bool(lost), "Lost" if lost else "AsPlanned",
                  f"was up, now not {' and not '.join(lost)}" if lost else ""),
    ]
    status.update(endpoint=render.endpoint(dep), workload=f"{workload['kind']}/{dep.name}",
                  podsReady=ready, podsDesired=desired,
                  conditions=_merge(status["conditions"], conditions))
    return _changes(old_status, status)


def _merge(current: list[dict], updates: list[dict]) -> list[dict]:
    by_type = {c["type"]: c for c in current}
    by_type.update({c["type"]: c for c in updates})
    return list(by_type.values())


def _warn_on_change(api: Api, body: dict, old: dict[str, dict], planned: dict) -> None:
    before = old.get("Planned", {})
    if (before.get("status"), before.get("reason"), before.get("message")) != ("False", planned["reason"],
                                                                               planned["message"]):
        api.event(body, "Warning", planned["reason"], planned["message"])


def _changes(old: dict, new: dict) -> dict:
    clean = {k: v for k, v in new.items() if v is not None}
    return {k: v for k, v in clean.items() if old.get(k) != v}
