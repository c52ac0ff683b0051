"""`nemodeploy render ansible <topology>`: the inventory for ansible/prepare.yml and ansible/preflight.yml."""

from __future__ import annotations

import click
import yaml

from nemodeploy.cli.common import load_topology
from nemodeploy.topology.loader import resolve


@click.command("ansible")
@click.argument("topology")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write the inventory here (default: stdout).")
@click.option("--venv", help="The Python environment on the nodes (default in the roles: /opt/nemodeploy/venv).")
@click.option("--known-hosts", type=click.Path(dir_okay=False), help="known_hosts file for SSH to the nodes (host keys stay checked).")
@click.option("--python", help="Interpreter on the nodes for Ansible's modules (default: Ansible discovers one).")
def ansible(topology: str, output: str | None, venv: str | None, known_hosts: str | None, python: str | None) -> None:
    """Write an Ansible inventory of TOPOLOGY's nodes (group `nemodeploy`), with pinned package versions."""
    from nemodeploy.preflight.inventory import inventory

    loaded = load_topology(topology)
    text = yaml.safe_dump(inventory(loaded, str(resolve(topology)), venv, known_hosts, python), sort_keys=False)
    if output:
        with open(output, "w") as out:
            out.write(text)
    else:
        click.echo(text, nl=False)
