"""Kubernetes: the NemoDeployment custom resource, its objects, and the kopf operator (docs/kubernetes.md).

spec.py (the resource) -> crd.py (its CRD, generated) ; render.py -> pods.py, scheduling.py,
launch.py, kuberay.py, lws.py (plain functions from a spec and its plan to objects) ;
reconcile.py (one idempotent reconcile over api.py's narrow Api) ; operator.py (kopf handlers).
Only api.py and operator.py import the `k8s` extra (kubernetes, kopf), and only when run.
"""
