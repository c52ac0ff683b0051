"""The operator's whole view of the Kubernetes API: five calls, nothing else.

The reconcile logic (reconcile.py) talks only to an `Api`; the operator process passes
`KubernetesApi` (the official client's dynamic client), tests pass an in-memory stand-in,
directly or behind an HTTP imitation of the API server that this very client talks to.
Keeping the boundary this narrow is what lets the handlers be
tested end to end without a live API server, which cannot run on the machines here.
"""

from __future__ import annotations

import datetime
from typing import Protocol

from nemodeploy.net import http_ok

HEALTH_TIMEOUT_S = 3.0
EVENT_SOURCE = "nemodeploy-operator"


class Api(Protocol):
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        """The object, or None when there is none."""

    def create(self, obj: dict) -> dict:
        """Create `obj` (namespace in its metadata); the stored object."""

    def replace(self, obj: dict) -> dict:
        """Replace the object's spec and metadata (`metadata.resourceVersion` guards against races)."""

    def event(self, owner: dict, kind: str, reason: str, message: str) -> None:
        """A Normal or Warning event about `owner`."""

    def healthy(self, url: str) -> bool:
        """Whether GET `url` answers 200 (the engine's /health, seen from the operator's pod)."""


class KubernetesApi:
    """The live API through the `kubernetes` client's dynamic client.

    Without an `api_client`: the pod's service account in the cluster, else ~/.kube/config.
    """

    def __init__(self, api_client=None, discovery_cache: str | None = None) -> None:
        import kubernetes

        if api_client is None:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
            api_client = kubernetes.client.ApiClient()
        self._client = kubernetes.dynamic.DynamicClient(api_client, cache_file=discovery_cache)
        self._not_found = kubernetes.dynamic.exceptions.NotFoundError

    def _resource(self, api_version: str, kind: str):
        return self._client.resources.get(api_version=api_version, kind=kind)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self._resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
        except self._not_found:
            return None

    def create(self, obj: dict) -> dict:
        resource = self._resource(obj["apiVersion"], obj["kind"])
        return resource.create(body=obj, namespace=obj["metadata"]["namespace"]).to_dict()

    def replace(self, obj: dict) -> dict:
        resource = self._resource(obj["apiVersion"], obj["kind"])
        return resource.replace(body=obj, namespace=obj["metadata"]["namespace"]).to_dict()

    def event(self, owner: dict, kind: str, reason: str, message: str) -> None:
        meta = owner["metadata"]
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.create({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": kind, "reason": reason, "message": message[:1024], "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": EVENT_SOURCE}, "reportingComponent": EVENT_SOURCE,
        })

    def healthy(self, url: str) -> bool:
        return http_ok(url, HEALTH_TIMEOUT_S)
