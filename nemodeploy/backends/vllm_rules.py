"""The flag-combination validator: refuse, before anything loads, what vLLM 0.33 would only fail on later.

Each rule reads the head's `vllm serve` arguments (after engine.extra_args are merged, so a
user's override is judged like a generated flag) and the facts of the deployment, and returns
the reason, the combination that works, and where the rule comes from (a public issue, or the
vLLM check it runs ahead of). `validate` raises the first refusal as one line; the flag table
check (vllm_table.check_argv) runs last, on the whole argv.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from nemodeploy.backends import vllm_kernels as kernels
from nemodeploy.backends.engine_config import LaunchError
from nemodeploy.backends.vllm_table import check_argv, flag_table

Args = dict[str, str | None]  # option -> value (None for a switch), in command order


class VllmError(LaunchError):
    """A vLLM launch nemodeploy refuses; the message is one line."""


@dataclass(frozen=True)
class Facts:
    """What the rules need besides the arguments: the hardware, the model, the plan, the launch."""

    arch: str  # catalog arch of the accelerator
    precision: str  # checkpoint precision: bf16 | fp8 | nvfp4 | fp32
    hybrid: bool  # the model has Mamba layers
    native_context: int  # the model config's max_position_embeddings
    mamba_slots: int  # Mamba state slots per rank the plan sized
    nnodes: int
    replicas_per_node: int  # whole tp x pp replicas a node holds; 0 when one spans nodes
    env: dict[str, str]  # the head's environment


@dataclass(frozen=True)
class Refusal:
    reason: str
    works: str
    source: str

    def line(self) -> str:
        return f"{self.reason} ({self.source}); what works: {self.works}"


def _int(args: Args, option: str, default: int) -> int:
    """The option's integer value; a value that is not one is left to the flag table check to report."""
    try:
        return int(args[option])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return default


def _speculative_method(args: Args) -> str | None:
    config = args.get("--speculative-config")
    if config is None:
        return None
    try:
        return str(json.loads(config).get("method"))
    except (ValueError, AttributeError):
        return "unparsable"


def _mtp(args: Args) -> bool:
    return _speculative_method(args) in ("mtp", "nemotron_h_mtp")


def _prefix_caching(args: Args) -> bool:
    """vLLM 0.33 turns prefix caching on unless told not to."""
    return "--disable-prefix-caching" not in args


def mtp_with_pipeline(args: Args, facts: Facts) -> Refusal | None:
    pp = _int(args, "--pipeline-parallel-size", 1)
    if _mtp(args) and pp > 1:
        tp = _int(args, "--tensor-parallel-size", 1)
        return Refusal(f"MTP speculative decoding with pipeline parallel size {pp} fails in vLLM",
                       f"--tensor-parallel-size {tp * pp} --pipeline-parallel-size 1 with MTP, or keep "
                       f"pp {pp} without MTP (serving.speculative_tokens: 0)", "vllm issue 49355")
    return None


def seqs_above_mamba_slots(args: Args, facts: Facts) -> Refusal | None:
    seqs = _int(args, "--max-num-seqs", 256)
    if facts.hybrid and seqs > facts.mamba_slots:
        return Refusal(f"--max-num-seqs {seqs} is above the {facts.mamba_slots} Mamba state slots the plan sized; "
                       "vLLM fails on it only after loading the weights",
                       f"--max-num-seqs {facts.mamba_slots} (or raise the memory the plan gives the Mamba state)",
                       "vllm issue 49064")
    return None


def moe_backend_for_gpu(args: Args, facts: Facts) -> Refusal | None:
    backend = args.get("--moe-backend") or "auto"
    problem = kernels.moe_backend_problem(backend, facts.arch, facts.precision)
    if problem:
        good = kernels.default_moe_backend(facts.arch, facts.precision)
        return Refusal(f"--moe-backend {backend}: {problem}", f"--moe-backend {good}",
                       "vLLM 0.33 fused-MoE kernel device checks")
    return None


def mamba_backend_for_gpu(args: Args, facts: Facts) -> Refusal | None:
    backend = args.get("--mamba-backend") or "triton"
    problem = kernels.mamba_backend_problem(backend, facts.arch)
    if problem:
        return Refusal(f"--mamba-backend {backend}: {problem}", f"--mamba-backend {kernels.default_mamba_backend(facts.arch)}",
                       "vLLM 0.33 Mamba backends")
    return None


def context_above_native(args: Args, facts: Facts) -> Refusal | None:
    length = _int(args, "--max-model-len", 0)
    if length <= facts.native_context:
        return None
    if facts.env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") == "1":
        return None
    return Refusal(f"--max-model-len {length} is above the model's native context of {facts.native_context} tokens "
                   "and vLLM refuses it at start",
                   f"serving.allow_long_context: true (sets VLLM_ALLOW_LONG_MAX_MODEL_LEN=1), or "
                   f"serving.max_context: {facts.native_context}", "vLLM ModelConfig max_model_len check")


def tool_parser_pairing(args: Args, facts: Facts) -> Refusal | None:
    parser, auto = args.get("--tool-call-parser"), "--enable-auto-tool-choice" in args
    if parser and not auto:
        return Refusal(f"--tool-call-parser {parser} without --enable-auto-tool-choice never parses a tool call",
                       f"--enable-auto-tool-choice --tool-call-parser {parser}", "vLLM OpenAI server tool-choice check")
    if auto and not parser:
        return Refusal("--enable-auto-tool-choice needs a --tool-call-parser and vLLM exits at start without one",
                       "--enable-auto-tool-choice --tool-call-parser qwen3_coder", "vLLM OpenAI server tool-choice check")
    return None


def prefix_caching_with_mtp(args: Args, facts: Facts) -> Refusal | None:
    if facts.hybrid and _mtp(args) and _prefix_caching(args):
        return Refusal("prefix caching (on by default) with MTP crashes on hybrid Mamba models",
                       "--disable-prefix-caching with MTP, or prefix caching without --speculative-config",
                       "vllm issue 39809")
    return None


def data_parallel_ep_on_ray(args: Args, facts: Facts) -> Refusal | None:
    dp = _int(args, "--data-parallel-size", 1)
    if (dp > 1 and facts.nnodes > 1 and "--enable-expert-parallel" in args
            and args.get("--data-parallel-backend") == "ray"):
        works = ("engine.launcher: mp (one vllm serve per node, --data-parallel-size-local and --headless)"
                 if facts.replicas_per_node else "engine.parallel.dp_size: 1, one replica over all the GPUs")
        return Refusal(f"data parallel {dp} with expert parallel over {facts.nnodes} nodes on Ray hangs at start",
                       works, "vllm issue 44878")
    return None


def kv_connector_on_hybrid(args: Args, facts: Facts) -> Refusal | None:
    if facts.hybrid and "--kv-transfer-config" in args:
        return Refusal("a KV connector (--kv-transfer-config) crashes on hybrid Mamba models",
                       "no --kv-transfer-config for this model", "vllm issue 46453")
    return None


# Replaced by something else in 0.33; the flag table alone would only say "unknown".
REMOVED_OPTIONS = {
    "--swap-space": "the CPU swap space is gone in vLLM 0.33 (it rejects the flag): drop it",
}
REMOVED_ENV = {
    "VLLM_USE_FLASHINFER_MOE_FP4": "--moe-backend flashinfer_cutlass or flashinfer_trtllm",
    "VLLM_USE_FLASHINFER_MOE_FP8": "--moe-backend flashinfer_cutlass or flashinfer_trtllm",
    "VLLM_FLASHINFER_MOE_BACKEND": "--moe-backend flashinfer_trtllm (latency) or flashinfer_cutlass (throughput)",
}


def removed_settings(args: Args, facts: Facts) -> Refusal | None:
    for option, why in REMOVED_OPTIONS.items():
        if option in args:
            return Refusal(f"{option} was removed", why, "vLLM 0.33 flag table")
    for name, replacement in REMOVED_ENV.items():
        if name in facts.env:
            return Refusal(f"{name} is gone and vLLM 0.33 ignores it", replacement, "vLLM 0.33 environment variables")
    return None


RULES: tuple[Callable[[Args, Facts], Refusal | None], ...] = (
    removed_settings,
    mtp_with_pipeline,
    seqs_above_mamba_slots,
    moe_backend_for_gpu,
    mamba_backend_for_gpu,
    context_above_native,
    tool_parser_pairing,
    prefix_caching_with_mtp,
    data_parallel_ep_on_ray,
    kv_connector_on_hybrid,
)


def refusals(args: Args, facts: Facts) -> list[Refusal]:
    """Every rule the combination breaks, in rule order."""
    return [r for rule in RULES if (r := rule(args, facts))]


def validate(args: Args, argv_tail: list[str], facts: Facts) -> None:
    """Raise VllmError for the first broken rule, then for anything vLLM's flag table rejects."""
    broken = refusals(args, facts)
    if broken:
        raise VllmError(broken[0].line())
    table = flag_table()
    problems = check_argv(argv_tail, table)
    if problems:
        raise VllmError(f"vLLM {table.vllm_version} would reject this command: {problems[0]}")
    unknown = sorted(k for k in facts.env if k.startswith("VLLM_") and k not in table.env)
    if unknown:
        raise VllmError(f"{unknown[0]} is not a variable vLLM {table.vllm_version} knows")
