"""`nemodeploy serve`: the embedded engine's OpenAI-compatible server, in the foreground.

Every failure is one line on stderr, never a traceback: a bad option or engine setting, and a
checkpoint that does not load (the loader's CheckpointError, the quantization reader's
QuantizationError, a config.json that describes no NemotronH, a JSON file that does not parse),
exit 2 and name the file or module; a server that cannot start (a port in use) exits 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from nemodeploy.backends import embedded
from nemodeploy.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, fail
from nemodeploy.engine.config import KV_CACHE_DTYPES, EngineConfig

# options that map one to one onto EngineConfig fields
_ENGINE_OPTIONS = [
    ("--dtype", str, "Weights and activation dtype (float32, bfloat16, float16)."),
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
    ("--kv-cache-dtype", click.Choice(KV_CACHE_DTYPES),
     "KV cache dtype: auto (the model dtype) or fp8 (E4M3, per-tensor scales from the checkpoint, else 1.0)."),
    ("--prefix-caching", bool, "Share KV pages and Mamba checkpoints between requests with a common prefix."),
    ("--mamba-checkpoint-interval", int, "Tokens between Mamba state checkpoints (prefix caching)."),
    ("--num-mamba-checkpoints", int, "Mamba states kept for cached prefixes (prefix caching)."),
]


def _engine_options(fn):
    for flag, kind, help_text in reversed(_ENGINE_OPTIONS):
        fn = click.option(flag, type=kind, default=None, help=help_text)(fn)
    return fn


class _OneLineUsage(click.Command):
    """A bad option is one line and exit 2 (click's own usage errors print the usage block)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            fail(f"nemodeploy serve: {err.format_message()}", EXIT_BAD_INPUT)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def build_config(model: str | None, config_file: str | None, overrides: dict) -> EngineConfig:
    """The EngineConfig of --config (a plan's, as JSON) and --model, flags over both; one line, exit 2, if bad."""
    values = {}
    if config_file:
        try:
            values = json.loads(Path(config_file).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            fail(f"nemodeploy serve: --config {config_file}: not a JSON engine config ({_one_line(err)})",
                 EXIT_BAD_INPUT)
        if not isinstance(values, dict):
            fail(f"nemodeploy serve: --config {config_file}: not a JSON object of engine settings", EXIT_BAD_INPUT)
    if model:
        values["model"] = model
    if "model" not in values:
        fail("nemodeploy serve: give --model <checkpoint dir> or --config <engine config JSON>", EXIT_BAD_INPUT)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return EngineConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        fail(f"nemodeploy serve: {_one_line(err)}", EXIT_BAD_INPUT)


def _data_errors() -> tuple[type[BaseException], ...]:
    """What reading a malformed file raises in the libraries under the loader (transformers and its
    huggingface_hub config checks, tokenizers, safetensors)."""
    from huggingface_hub.errors import StrictDataclassError

    return OSError, ValueError, TypeError, LookupError, ArithmeticError, StrictDataclassError


def unloadable(directory: Path, err: BaseException) -> str:
    """The line for a checkpoint that failed to load with an error that names no file: the JSON file of
    `directory` that does not parse (tokenizer.json, tokenizer_config.json, ...), else the directory."""
    for path in sorted(directory.glob("*.json")):
        try:
            json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as bad:
            return f"{path}: not valid JSON ({_one_line(bad)})"
    return f"{directory}: the checkpoint does not load ({type(err).__name__}: {_one_line(err)})"


@click.command("serve", cls=_OneLineUsage)
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
    serve_or_exit(Path(config.model), lambda: embedded.run_local(config, host, port, api_key, detach=False))


def serve_or_exit(directory: Path, start: Callable[[], object]) -> None:
    """Run `start`, which loads the checkpoint in `directory` and serves until stopped; when it fails, exit
    with one line: the reason, naming the file or module where the checkpoint is at fault (exit 2)."""
    from nemodeploy.engine.loader import CheckpointError
    from nemodeploy.engine.quant.config import QuantizationError
    from nemodeploy.models.config import ConfigError

    try:
        start()
    except embedded.LocalError as err:
        fail(f"nemodeploy: {err}", err.exit_code)
    except (CheckpointError, QuantizationError) as err:  # each names the file, or the module and algorithm
        fail(f"nemodeploy: {_one_line(err)}", EXIT_BAD_INPUT)
    except ConfigError as err:
        line = _one_line(err)
        where = "" if str(directory) in line else f"{directory / 'config.json'}: "
        fail(f"nemodeploy: {where}{line}", EXIT_BAD_INPUT)
    except _data_errors() as err:  # from transformers or safetensors, reading what the checks above let by
        fail(f"nemodeploy: {unloadable(directory, err)}", EXIT_BAD_INPUT)
    except Exception as err:  # noqa: BLE001 - a device that is not there, an engine that fails to start
        fail(f"nemodeploy: {directory}: the engine did not start ({type(err).__name__}: {_one_line(err)})",
             EXIT_FAILED)
