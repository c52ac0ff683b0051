"""The operator's production Api (the official `kubernetes` client) doing whole reconciles over
HTTP, against the HTTP STAND-IN for the API server (k8s_http: no live API server can run here)."""

from __future__ import annotations

import pytest
import yaml
from k8s_http import ApiServerStandIn

from nemodeploy.k8s.api import KubernetesApi
from nemodeploy.k8s.reconcile import reconcile
from nemodeploy.k8s.spec import API_VERSION, KIND
from nemodeploy.topology.loader import resolve

kubernetes = pytest.importorskip("kubernetes")
NS = "serving"
NOW = "2026-01-01T00:00:00Z"


def test_the_kubernetes_client_adapter_reconciles_over_http(api, tmp_path):
    spec = {"topology": yaml.safe_load(resolve("h200-8x-bf16").read_text()), "runtime": "kuberay",
            "modelVolume": {"persistentVolumeClaim": "models"}}
    api.create({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "ultra", "namespace": NS}, "spec": spec})

    def step(live) -> dict:
        changes = reconcile(live, api.get(API_VERSION, KIND, NS, "ultra"), NOW)
        if changes:
            api.patch_status(API_VERSION, KIND, NS, "ultra", changes)
        return changes

    with ApiServerStandIn(api) as url:
        client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=url))
        live = KubernetesApi(client, discovery_cache=str(tmp_path / "discovery.json"))
        assert step(live)["conditions"]
        assert api.kinds() == {(KIND, "ultra"), ("ConfigMap", "ultra-plan"), ("Service", "ultra"),
                               ("RayCluster", "ultra")}
        assert [(e[1], e[2]) for e in api.events] == [("Normal", "Created")] * 3  # POSTed as core/v1 Events

        writes = len(api.writes)
        assert step(live) == {} and len(api.writes) == writes

        api.edit_spec(API_VERSION, KIND, NS, "ultra", lambda s: s["topology"]["nodes"][0].update(count=2))
        step(live)
        assert ("replace", "RayCluster", "ultra") in api.writes[writes:]  # a PUT with the stored resourceVersion
        assert api.get("ray.io/v1", "RayCluster", NS, "ultra")["spec"]["workerGroupSpecs"][0]["replicas"] == 1

        assert live.get("v1", "ConfigMap", NS, "absent") is None
        assert live.healthy(f"{url}/version") and not live.healthy("http://127.0.0.1:9/health")
