"""A local Ray for the executor tests: `num_cpus` logical CPUs (one per rank), no dashboard, no auth."""

from __future__ import annotations

import contextlib
import os
import time

import ray


@contextlib.contextmanager
def local_ray(num_cpus: int):
    # unset, a new local cluster turns on token auth and writes ~/.ray/auth_token, which later
    # `ray start --head` runs pick up (and their workers do not)
    ours = "RAY_AUTH_MODE" not in os.environ
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=num_cpus, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        if ours:
            os.environ.pop("RAY_AUTH_MODE")


def idle_cpus(total: int) -> float:
    """CPUs free again once every rank's bundle is released (polls: release is asynchronous)."""
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < total and time.monotonic() < deadline:
        time.sleep(0.1)
    return ray.available_resources().get("CPU", 0)
