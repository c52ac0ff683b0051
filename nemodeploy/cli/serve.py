"""`nemodeploy serve`: the embedded engine's OpenAI-compatible server, in the foreground."""

from __future__ import annotations

import json
from pathlib import Path

import click

from nemodeploy.backends import embedded
from nemodeploy.cli.common import fail
from nemodeploy.engine.config import EngineConfig

# options that map one to one onto EngineConfig fields
_ENGINE_OPTIONS = [
    ("--dtype", str, "Weights and KV dtype (float32, bfloat16, float16)."),
    ("--device", str, "torch device (cpu, cuda, cuda:1)."),
    ("--block-size", int, "Tokens per KV block."),
    ("--num-kv-blocks", int, "KV blocks per attention layer."),
    ("--num-mamba-slots", int, "Mamba state slots (the most sequences that can hold state)."),
    ("--max-num-seqs", int, "Running sequences per step."),
    ("--max-num-batched-tokens", int, "Tokens per step (chunked-prefill budget)."),
    ("--max-model-len", int, "Context length: prompt plus completion."),
    ("--speculative-tokens", int, "MTP draft tokens per step (0 = off; the recipes use 5)."),
    ("--max-queue", int, "Waiting requests before new ones get HTTP 429."),
    ("--thinking-budget", int, "Default reasoning tokens before </think> is forced."),
    ("--served-model-name", str, "Model name on the API (default: the directory name)."),
    ("--default-thinking", bool, "Thinking on / off for chat requests that do not say (default: the template's)."),
    ("--prefix-caching", bool, "Share KV pages and Mamba checkpoints between requests with a common prefix."),
    ("--mamba-checkpoint-interval", int, "Tokens between Mamba state checkpoints (prefix caching)."),
    ("--num-mamba-checkpoints", int, "Mamba states kept for cached prefixes (prefix caching)."),
]


def _engine_options(fn):
    for flag, kind, help_text in reversed(_ENGINE_OPTIONS):
        fn = click.option(flag, type=kind, default=None, help=help_text)(fn)
    return fn


def build_config(model: str | None, config_file: str | None, overrides: dict) -> EngineConfig:
    values = json.loads(Path(config_file).read_text()) if config_file else {}
    if model:
        values["model"] = model
    if "model" not in values:
        raise click.UsageError("give --model <checkpoint dir> or --config <engine config JSON>")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return EngineConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


@click.command("serve")
@click.option("--model", help="HF checkpoint directory.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="EngineConfig as JSON (from a plan); flags override its fields.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--api-key", envvar="NEMODEPLOY_API_KEY", default=None, help="Require 'Authorization: Bearer KEY'.")
@_engine_options
def serve(model, config_file, host, port, api_key, **overrides):
    """Serve a Nemotron-H checkpoint with the embedded engine (OpenAI-compatible API)."""
    config = build_config(model, config_file, overrides)
    try:
        embedded.run_local(config, host, port, api_key, detach=False)
    except embedded.LocalError as err:
        fail(f"nemodeploy: {err}", err.exit_code)

