"""A click group whose commands are imported only when invoked.

`plan`, `schema` and `render` must run with the base dependencies alone, so no module of a
command that needs torch, ray or paramiko is imported until that command runs.
"""

from __future__ import annotations

import importlib

import click

from nemodeploy.cli.common import EXIT_BAD_INPUT, fail

# name -> (module, attribute, one-line help)
CommandTable = dict[str, tuple[str, str, str]]


class LazyGroup(click.Group):
    def __init__(self, *args, lazy_commands: CommandTable, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_commands])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy_commands:
            return super().get_command(ctx, name)
        module, attr, _ = self.lazy_commands[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as err:
            if (err.name or "").startswith("nemodeploy"):
                raise
            return _missing_extra(name, err)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.commands[name].get_short_help_str(limit=90)) for name in super().list_commands(ctx)]
        rows += [(name, help_text) for name, (_, _, help_text) in self.lazy_commands.items()]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))


def _missing_extra(name: str, err: ImportError) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def unavailable() -> None:
        fail(f"nemodeploy: `{name}` needs an extra that is not installed ({err.name} is missing): "
             "pip install 'nemodeploy[engine,cluster]'", EXIT_BAD_INPUT)

    return unavailable
