"""STAND-IN for the API server's HTTP surface, over the in-memory store (k8s_apistore).

Just enough of the Kubernetes REST API for the official `kubernetes` client's dynamic client,
the operator's production adapter (nemodeploy.k8s.api.KubernetesApi), to run unchanged:
/version and discovery (/api/v1, /apis, /apis/<group>/<version>), and GET / POST / PUT of
namespaced objects, with Kubernetes' Status bodies for 404 and 409. Events POSTed by the
adapter are checked against the strict built-in schema and recorded in the store's `events`.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from k8s_apistore import ApiError, InMemoryApi
from k8s_schemas import validate

# (group, version) -> [(plural, kind)]
RESOURCES = {
    ("", "v1"): [("configmaps", "ConfigMap"), ("services", "Service"), ("events", "Event")],
    ("ray.io", "v1"): [("rayclusters", "RayCluster")],
    ("leaderworkerset.x-k8s.io", "v1"): [("leaderworkersets", "LeaderWorkerSet")],
    ("nemodeploy.io", "v1alpha1"): [("nemodeployments", "NemoDeployment")],
}
_OBJECT = re.compile(r"^/(?:api|apis/(?P<group>[^/]+))/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/"
                     r"(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$")


def _discovery(path: str):
    if path == "/version":
        return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-stand-in"}
    if path == "/apis":
        groups = [{"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                   "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v in RESOURCES if g]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    for (group, version), kinds in RESOURCES.items():
        if path == (f"/apis/{group}/{version}" if group else f"/api/{version}"):
            resources = [{"name": plural, "singularName": kind.lower(), "namespaced": True, "kind": kind,
                          "verbs": ["get", "list", "create", "update", "patch", "delete"]} for plural, kind in kinds]
            return {"kind": "APIResourceList", "groupVersion": f"{group}/{version}".lstrip("/"),
                    "resources": resources}
    return None


class _Handler(BaseHTTPRequestHandler):
    store: InMemoryApi

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _failure(self, err: ApiError) -> None:
        reason = {404: "NotFound", 409: "Conflict"}.get(err.code, "BadRequest")
        self._reply(err.code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": str(err),
                               "reason": reason, "code": err.code})

    def _target(self):
        match = _OBJECT.match(self.path.split("?")[0])
        if not match:
            return None
        group, version = match["group"] or "", match["version"]
        kind = dict(RESOURCES.get((group, version), [])).get(match["plural"])
        api_version = f"{group}/{version}" if group else version
        return api_version, kind, match["ns"], match["name"]

    def _body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def do_GET(self) -> None:
        found = _discovery(self.path.split("?")[0])
        if found is not None:
            return self._reply(200, found)
        target = self._target()
        obj = self.store.get(*target) if target and target[1] and target[3] else None
        if obj is None:
            return self._failure(ApiError(404, f"{self.path} not found"))
        self._reply(200, obj)

    def do_POST(self) -> None:
        body = self._body()
        if body.get("kind") == "Event":
            event = {**body, "metadata": {**body["metadata"], "name": body["metadata"]["generateName"] + "x"}}
            validate(event)
            self.store.events.append((body["involvedObject"]["name"], body["type"], body["reason"], body["message"]))
            return self._reply(201, event)
        try:
            self._reply(201, self.store.create(body))
        except ApiError as err:
            self._failure(err)

    def do_PUT(self) -> None:
        try:
            self._reply(200, self.store.replace(self._body()))
        except ApiError as err:
            self._failure(err)


class ApiServerStandIn:
    """`with ApiServerStandIn(store) as url:` serves `store` on a loopback port until the block ends."""

    def __init__(self, store: InMemoryApi) -> None:
        handler = type("Handler", (_Handler,), {"store": store})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
