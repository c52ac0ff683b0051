"""`nemodeploy render <what> <topology>`: what a launch would run or apply, written without running it."""

from __future__ import annotations

import click

from nemodeploy.cli.lazy import LazyGroup

RENDERERS: dict[str, tuple[str, str, str]] = {
    "vllm": ("nemodeploy.cli.render_vllm", "vllm", "Each node's vLLM launch: native command and docker run form."),
    "ansible": ("nemodeploy.cli.render_ansible", "ansible", "An Ansible inventory for ansible/prepare.yml and preflight.yml."),
    "k8s": ("nemodeploy.cli.render_k8s", "k8s", "Kubernetes objects: plan ConfigMap, Service, RayCluster or LeaderWorkerSet."),
}


@click.group("render", cls=LazyGroup, lazy_commands=RENDERERS)
def render() -> None:
    """Write what a launch would run (commands, manifests, inventories) without running it."""
