"""The NemoDeployment operator: kopf handlers, each a plain function over (body, patch, memo).

Run it with `kopf run -m nemodeploy.k8s.operator --all-namespaces` (k8s/operator.yaml does).
Creation, every spec change, the operator's own restart (resume) and a timer all do the
same thing: one idempotent reconcile (reconcile.py) whose changed status fields go into
kopf's patch. The timer is what notices pods becoming ready or dying, so the status never
lags the workload by more than `INTERVAL_S`. Deletion needs no handler and no finalizer:
every owned object carries an owner reference, and Kubernetes' garbage collector removes
them with the NemoDeployment.

The API client lives in kopf's memo (`memo.api`), set at start-up: tests call the handlers
with their own stand-in there.
"""

from __future__ import annotations

import copy
import datetime

import kopf

from nemodeploy.k8s.reconcile import reconcile
from nemodeploy.k8s.spec import GROUP, PLURAL, VERSION

INTERVAL_S = 30.0


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
def connect(memo: kopf.Memo, **_) -> None:
    from nemodeploy.k8s.api import KubernetesApi

    memo.setdefault("api", KubernetesApi())


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.timer(GROUP, VERSION, PLURAL, interval=INTERVAL_S, initial_delay=INTERVAL_S)
def reconcile_deployment(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_) -> None:
    changed = reconcile(memo["api"], _plain(body), now())
    if changed:
        patch.setdefault("status", {}).update(changed)


def _plain(body) -> dict:
    """kopf's read-only body as a plain dict of its own (the reconcile logic knows nothing of kopf)."""
    return copy.deepcopy(dict(body))
