"""Property: whatever NemoDeployment a user writes, one reconcile either creates objects that
validate (the stand-in checks every write against the real schemas) or reports one located
line in the Planned condition; it never raises, and a second reconcile writes nothing."""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from k8s_apistore import InMemoryApi

from nemodeploy.k8s.reconcile import reconcile
from nemodeploy.k8s.spec import API_VERSION, KIND
from nemodeploy.models.specs import SPECS
from nemodeploy.topology.catalog import ACCELERATORS

NS = "fuzz"


@st.composite
def deployments(draw) -> dict:
    kind = draw(st.sampled_from(sorted(ACCELERATORS)))
    nics = draw(st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["ib0", "ens1f0np0", "eth1"]), "rdma": st.booleans(),
        "hca": st.none() | st.sampled_from(["mlx5_0", "mlx5_1"])}), max_size=2, unique_by=lambda n: n["name"]))
    per_node = draw(st.sampled_from([1, 4, 8]))
    nodes = [{"name": f"n{i}", "address": f"10.0.0.{i + 1}", "count": draw(st.integers(1, 2)),
              "accelerators": {"kind": kind, "count": per_node}, "nics": nics}
             for i in range(draw(st.integers(1, 3)))]
    engine = {"kind": draw(st.sampled_from(["embedded", "vllm", "vllm"])), "launcher": draw(st.sampled_from(["ray", "mp"]))}
    model = {"id": draw(st.sampled_from(sorted(SPECS))), "precision": draw(st.sampled_from(["bf16", "fp8", "nvfp4"]))}
    model["path"] = draw(st.sampled_from([None, None, "/models/ckpt", "/elsewhere/ckpt"]))
    spec = {
        "topology": {"name": "fuzz", "nodes": nodes, "model": model, "engine": engine,
                     "serving": {"max_context": draw(st.sampled_from([4096, 65536, 262144])),
                                 "concurrency": draw(st.integers(1, 64))}},
        # mostly valid, sometimes not: both kinds of answer get exercised
        "modelVolume": draw(st.sampled_from([{"persistentVolumeClaim": "m", "mountPath": "/models"}] * 4
                                            + [{"hostPath": "/m"}, {"hostPath": "/m", "persistentVolumeClaim": "m"}])),
        "network": draw(st.sampled_from([{}, {}, {}, {"secondaryNetwork": "roce"}, {"hostNetwork": False},
                                         {"hostNetwork": True, "secondaryNetwork": "roce"}])),
    }
    for key, values in (("runtime", ["kuberay", "leaderworkerset"]), ("image", ["registry.local/nemo:1"])):
        if draw(st.booleans()):
            spec[key] = draw(st.sampled_from(values))
    return spec


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deployments())
def test_random_deployments_reconcile_to_valid_objects_or_one_line(spec):
    api = InMemoryApi()
    api.create({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "fuzz", "namespace": NS},
                "spec": spec})
    body = api.get(API_VERSION, KIND, NS, "fuzz")
    status = reconcile(api, body, "2026-01-01T00:00:00Z")
    planned = next(c for c in status["conditions"] if c["type"] == "Planned")
    event(planned["reason"])
    if planned["status"] == "False":
        assert planned["reason"] in ("InvalidSpec", "DoesNotFit", "CannotRender")
        assert planned["message"] and "\n" not in planned["message"]
        assert api.kinds() == {(KIND, "fuzz")}
        return
    assert len(api.kinds()) == 4  # the resource, its ConfigMap, Service and workload, all validated on write
    api.patch_status(API_VERSION, KIND, NS, "fuzz", status)
    writes = len(api.writes)
    assert reconcile(api, api.get(API_VERSION, KIND, NS, "fuzz"), "2026-01-01T00:00:00Z") == {}
    assert len(api.writes) == writes
