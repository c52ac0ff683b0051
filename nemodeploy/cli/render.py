"""`nemodeploy render <what> <topology>`: what a launch would run or apply, written without running it."""

from __future__ import annotations

import click

from nemodeploy.cli.lazy import LazyGroup

RENDERERS: dict[str, tuple[str, str, str]] = {
}


@click.group("render", cls=LazyGroup, lazy_commands=RENDERERS)
def render() -> None:
    """Write what a launch would run (commands, manifests, inventories) without running it."""
