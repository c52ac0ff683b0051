"""Preflight: prove every node of a topology ready before `up`, or say what to fix.

`probe` runs on the nodes (standard library only) and measures; `runner` drives it over
`transport` (local, or the SSH layer) on all nodes at once; `checks` judge the plain data against
the topology and plan into `result.CheckResult`s; `env` turns the measured route into the
NCCL/Gloo/vLLM environment by `nemodeploy.topology.netenv`'s rules. Never imports torch or ray.
"""
