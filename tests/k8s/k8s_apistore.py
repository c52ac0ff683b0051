"""STAND-IN for the Kubernetes API server: an in-memory object store behind the operator's `Api`.

No live API server can run on these machines (no kube-apiserver, kind, k3s or kwok binary
can be installed here), so the operator's handlers are tested end to end against this.
It does what the handlers depend on, the way the API server does it:

- create: 409 when the name is taken; uid, resourceVersion, generation and
  creationTimestamp assigned; the object validated against its schema (schemas.validate:
  strict built-in schemas, the upstream KubeRay / LWS CRDs, our own CRD), like admission;
- replace: 404 when missing, 409 on a stale resourceVersion, status kept, generation bumped
  when the spec changed;
- delete: the owner references' garbage collection (background cascade), recursively;
- status: `patch_status` merges what kopf would patch into the status subresource,
  validated against the CRD; `set_status` plays the KubeRay / LWS controllers reporting pods.

`writes` records every create / replace, so a test can say that a reconcile wrote nothing.
"""

from __future__ import annotations

import copy
import itertools
import uuid

from k8s_schemas import validate


class ApiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


def _key(api_version: str, kind: str, namespace: str, name: str) -> tuple:
    return api_version, kind, namespace, name


def _key_of(obj: dict) -> tuple:
    meta = obj["metadata"]
    return _key(obj["apiVersion"], obj["kind"], meta.get("namespace", "default"), meta["name"])


class InMemoryApi:
    def __init__(self) -> None:
        self.objects: dict[tuple, dict] = {}
        self.events: list[tuple[str, str, str, str]] = []  # (object name, type, reason, message)
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.serving: set[str] = set()  # URLs whose GET answers 200
        self._versions = itertools.count(1)

    # the operator's Api
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        obj = self.objects.get(_key(api_version, kind, namespace, name))
        return copy.deepcopy(obj)

    def create(self, obj: dict) -> dict:
        key = _key_of(obj)
        if key in self.objects:
            raise ApiError(409, f"{obj['kind']} {key[3]} already exists")
        obj = copy.deepcopy(obj)
        validate(obj)
        obj["metadata"].update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._versions)), generation=1,
                               creationTimestamp="2026-01-01T00:00:00Z")
        self.objects[key] = obj
        self.writes.append(("create", obj["kind"], key[3]))
        return copy.deepcopy(obj)

    def replace(self, obj: dict) -> dict:
        key = _key_of(obj)
        have = self.objects.get(key)
        if have is None:
            raise ApiError(404, f"{obj['kind']} {key[3]} not found")
        if obj["metadata"].get("resourceVersion") != have["metadata"]["resourceVersion"]:
            raise ApiError(409, f"{obj['kind']} {key[3]}: the object has been modified")
        new = copy.deepcopy(obj)
        validate(new)
        kept = {k: have["metadata"][k] for k in ("uid", "creationTimestamp", "generation")}
        new["metadata"].update(kept, resourceVersion=str(next(self._versions)))
        if new.get("spec") != have.get("spec"):
            new["metadata"]["generation"] += 1
        if "status" in have:
            new["status"] = have["status"]
        self.objects[key] = new
        self.writes.append(("replace", obj["kind"], key[3]))
        return copy.deepcopy(new)

    def event(self, owner: dict, kind: str, reason: str, message: str) -> None:
        self.events.append((owner["metadata"]["name"], kind, reason, message))

    def healthy(self, url: str) -> bool:
        return url in self.serving

    # what a user (kubectl) and the other controllers do
    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        obj = self.objects.pop(_key(api_version, kind, namespace, name), None)
        if obj is None:
            raise ApiError(404, f"{kind} {name} not found")
        uid = obj["metadata"]["uid"]
        for key, other in list(self.objects.items()):
            if any(ref["uid"] == uid for ref in other["metadata"].get("ownerReferences", [])) and key in self.objects:
                self.delete(*key)

    def edit_spec(self, api_version: str, kind: str, namespace: str, name: str, edit) -> dict:
        obj = self.get(api_version, kind, namespace, name)
        edit(obj["spec"])
        return self.replace(obj)

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict) -> None:
        obj = self.objects[_key(api_version, kind, namespace, name)]
        merged = {**obj.get("status", {}), **copy.deepcopy(status)}
        validate({**obj, "status": merged})
        obj["status"] = merged

    def set_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict) -> None:
        """What the workload's controller reports, checked against its CRD's status schema."""
        obj = self.objects[_key(api_version, kind, namespace, name)]
        validate({**obj, "status": status})
        obj["status"] = copy.deepcopy(status)

    def kinds(self) -> set[tuple[str, str]]:
        return {(key[1], key[3]) for key in self.objects}
