"""`nemodeploy render k8s <topology|NemoDeployment file> [-o DIR]`: the objects the operator would create.

Base dependencies only: rendering needs neither a cluster nor the `k8s` extra.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from nemodeploy.cli.common import EXIT_BAD_INPUT, EXIT_INFEASIBLE, fail, load_topology

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")


def _manifest(path: Path) -> dict | None:
    """The file's NemoDeployment document, None when it is something else (a topology)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # the topology loader reports it, with its location
    return doc if isinstance(doc, dict) and doc.get("kind") == "NemoDeployment" else None


def _from_options(source: str, runtime, image, model_pvc, model_host_path, mount_path):
    from pydantic import ValidationError

    from nemodeploy.k8s.spec import DeploymentSpec

    topology = load_topology(source)
    volume = {"hostPath": model_host_path} if model_host_path else {"persistentVolumeClaim": model_pvc}
    try:
        return DeploymentSpec(topology=topology, runtime=runtime, image=image,
                              model_volume={**volume, "mountPath": mount_path})
    except ValidationError as err:
        first = err.errors()[0]
        fail(f"{'.'.join(map(str, first['loc']))}: {first['msg']}", EXIT_BAD_INPUT)


@click.command("k8s")
@click.argument("source", required=False)
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Write one YAML file per object into DIR (default: one YAML stream on stdout).")
@click.option("--name", help="Deployment name (default: the manifest's, or the topology's name).")
@click.option("--namespace", default=None, help="Namespace (default: the manifest's, or 'default').")
@click.option("--runtime", type=click.Choice(["kuberay", "leaderworkerset"]), default=None,
              help="RayCluster or LeaderWorkerSet (default: from engine.launcher, ray or mp).")
@click.option("--image", help="Serving image (default for vLLM: the supported vllm/vllm-openai release).")
@click.option("--model-pvc", default="nemodeploy-models", show_default=True,
              help="PersistentVolumeClaim holding the model (read-only).")
@click.option("--model-host-path", help="Node directory holding the model, instead of a PVC.")
@click.option("--mount-path", default="/models", show_default=True, help="Where the model volume appears in pods.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of the objects on stdout.")
@click.option("--crd", is_flag=True, help="Print the NemoDeployment CRD (k8s/crd.yaml) instead.")
def k8s(source, output, name, namespace, runtime, image, model_pvc, model_host_path, mount_path, as_json, crd):
    """Write the Kubernetes objects that serve SOURCE: a topology (profile name or YAML file) or a
    NemoDeployment manifest. The plan-JSON ConfigMap, the Service, and the KubeRay RayCluster or
    LeaderWorkerSet, exactly as the operator would create them."""
    from nemodeploy.k8s.reconcile import SpecProblem, parse, plan_for

    if crd:
        from nemodeploy.k8s.crd import crd as definition

        return _emit([definition()], output, as_json)
    if not source:
        fail("nemodeploy render k8s: give a topology (profile name or YAML file) or a NemoDeployment manifest",
             EXIT_BAD_INPUT)
    manifest = _manifest(Path(source)) if Path(source).is_file() else None
    try:
        if manifest is not None:
            meta = manifest.get("metadata") or {}
            name, namespace = name or meta.get("name"), namespace or meta.get("namespace")
            spec = parse(manifest.get("spec") or {})
        else:
            spec = _from_options(source, runtime, image, model_pvc, model_host_path, mount_path)
        name = name or spec.topology.name
        if not _DNS_LABEL.match(name or ""):
            fail(f"name {name!r}: not a Kubernetes name (lower-case letters, digits, '-', at most 52); "
                 "give --name", EXIT_BAD_INPUT)
        plan, dep, objs = plan_for(name, namespace or "default", spec)
    except SpecProblem as problem:
        fail(f"{source}: {problem}", EXIT_BAD_INPUT)
    if dep is None:
        fail(f"{spec.topology.name}: nothing to deploy: {plan.reason}", EXIT_INFEASIBLE)
    _emit(objs, output, as_json)


def _emit(objs: list[dict], output: Path | None, as_json: bool) -> None:
    import yaml

    if as_json:
        click.echo(json.dumps(objs, indent=2))
    elif output is None:
        click.echo(yaml.safe_dump_all(objs, sort_keys=False), nl=False)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        for index, obj in enumerate(objs):
            path = output / f"{index:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(obj, sort_keys=False))
        click.echo(f"wrote {len(objs)} objects to {output}", err=True)
