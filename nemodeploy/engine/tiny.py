"""A tiny seeded random Nemotron-H in HF layout, with a real (locally trained) tokenizer.

The weights come from transformers' own `NemotronHForCausalLM(...).save_pretrained`, so the
tensor names are the checkpoint's (`backbone.*`, `lm_head.weight`). transformers has no
MTP module, so the MTP head is added in vLLM's `mtp.*` naming (see engine/model/mtp.py):
its layers are built as transformers layers of kinds `mtp_layer_types` and renamed
`backbone.layers.N.*` -> `mtp.layers.N.*`, plus enorm / hnorm / eh_proj on layer 0 and
final_layernorm on the last. transformers ignores `mtp.*` when loading.

With `distill_mtp=True` (what `tiny_model_dir()` writes) the random MTP head is then trained
briefly against the fixed main model, see `distill_mtp_head`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from nemodeploy.engine.chat_template import CHAT_TEMPLATE
from nemodeploy.paths import cache_dir

SPEC = Path(__file__).resolve().parent.parent / "models" / "specs" / "nemotron-h-tiny.json"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]
# single tokens that stay in decoded text, as in the released tokenizer: the tool-call parser reads them
TEXT_TOKENS = ("<tool_call>", "</tool_call>")


_TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A hybrid model mixes state space layers with attention.
Mamba layers keep a fixed size state; attention layers keep a cache that grows with the context.
Experts are chosen by a router, and only a few of them run for each token.
Hello! How are you today? I am fine, thank you. What is two plus two? Two plus two is four.
Let me think step by step. First, read the question. Then, answer it clearly and briefly.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024. Code: def add(a, b): return a + b
The user asks a question and the assistant answers it. The system sets the rules of the chat.
"""


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Give a transformers NemotronH seeded weights of unit-scale activations.

    HF's init (std 0.02, norms at 1, zero router bias) makes most layers near no-ops, which
    would let a wrong mixer pass a logits comparison. dt_bias is drawn so that softplus(dt)
    stays far above time_step_min: transformers' prefill-only dt clamp then never binds.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=gen)

    with torch.no_grad():
        for name, t in sorted(model.state_dict(keep_vars=True).items()):
            shape = t.shape
            if name.endswith("norm.weight") or name.endswith("norm_f.weight") or "layernorm" in name:
                value = 1 + 0.1 * randn(shape)
            elif name.endswith("A_log"):
                value = torch.log(1 + 7 * torch.rand(shape, generator=gen))
            elif name.endswith("dt_bias"):
                value = -2 * torch.rand(shape, generator=gen)
            elif name.endswith(".D"):
                value = randn(shape)
            elif name.endswith("e_score_correction_bias"):
                value = 0.5 * randn(shape)
            elif "conv1d" in name:
                value = 0.5 * randn(shape)
            elif "embeddings" in name:
                value = randn(shape)
            else:
                value = randn(shape) / math.sqrt(shape[-1])
            t.copy_(value)


def _hf_config(spec: dict):
    from transformers import NemotronHConfig

    return NemotronHConfig(**{k: v for k, v in spec.items() if k not in ("architectures", "model_type")})


def _mtp_tensors(spec: dict, seed: int, workdir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    from transformers import NemotronHForCausalLM

    mtp_spec = dict(spec, hybrid_override_pattern=spec["mtp_hybrid_override_pattern"], num_nextn_predict_layers=0)
    mtp_spec.pop("mtp_hybrid_override_pattern")
    model = NemotronHForCausalLM(_hf_config(mtp_spec))
    randomize_(model, seed + 1)
    model.save_pretrained(workdir)
    tensors = {
        "mtp." + name.removeprefix("backbone."): t
        for name, t in load_file(workdir / "model.safetensors").items()
        if name.startswith("backbone.layers.")
    }
    gen = torch.Generator().manual_seed(seed + 2)
    hidden, last = spec["hidden_size"], len(spec["mtp_hybrid_override_pattern"]) - 1
    for norm in ("mtp.layers.0.enorm.weight", "mtp.layers.0.hnorm.weight", f"mtp.layers.{last}.final_layernorm.weight"):
        tensors[norm] = 1 + 0.1 * torch.randn(hidden, generator=gen)
    tensors["mtp.layers.0.eh_proj.weight"] = torch.randn(hidden, 2 * hidden, generator=gen) / math.sqrt(2 * hidden)
    return tensors


# MTP distillation: sizes chosen to stay within a few seconds on one CPU core
DISTILL_PROMPT_LENS = (3, 6, 10, 16)
DISTILL_PROMPTS_PER_LEN = 64
DISTILL_NEW_TOKENS = 40
DISTILL_STEPS = 200
DISTILL_BATCH = 24
DISTILL_LR = 1e-2
DISTILL_BLOCK_SIZE = 16
# written into tiny_model_dir() once its head is distilled; a cached model without it is rewritten
DISTILLED_MARKER = "mtp_distilled"


def _greedy_sequences(model, gen: torch.Generator, vocab_size: int) -> list[tuple[list[int], int]]:
    """(prompt + the main model's greedy continuation, prompt length) for seeded random prompts."""
    sequences = []
    for prompt_len in DISTILL_PROMPT_LENS:
        prompts = torch.randint(len(SPECIAL_TOKENS), vocab_size, (DISTILL_PROMPTS_PER_LEN, prompt_len), generator=gen)
        with torch.no_grad():
            out = model.generate(prompts, max_new_tokens=DISTILL_NEW_TOKENS, min_new_tokens=DISTILL_NEW_TOKENS,
                                 do_sample=False, pad_token_id=0)
        sequences += [(row, prompt_len) for row in out.tolist()]
    return sequences


def _prefill(engine_model, sequences: list[list[int]], include_mtp: bool):
    """Batch metadata and a fresh cache that hold `sequences` as prefill rows of the engine."""
    from nemodeploy.engine.batch import BatchMetadata
    from nemodeploy.engine.cache import HybridCache

    length = len(sequences[0])
    blocks = -(-length // DISTILL_BLOCK_SIZE)
    batch = BatchMetadata.build(
        query_lens=[length] * len(sequences), context_lens=[0] * len(sequences),
        block_tables=[list(range(i * blocks, (i + 1) * blocks)) for i in range(len(sequences))],
        mamba_slots=list(range(len(sequences))), block_size=DISTILL_BLOCK_SIZE,
    )
    cache = HybridCache(engine_model.config, blocks * len(sequences), DISTILL_BLOCK_SIZE, len(sequences), torch.float32, include_mtp=include_mtp)
    return batch, cache


def _main_model_view(engine_model, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The main model's hidden states [N, L, hidden] and its greedy next tokens [N, L]."""
    batch, cache = _prefill(engine_model, sequences, include_mtp=False)
    with torch.no_grad():
        hidden = engine_model(torch.tensor(sequences).flatten(), batch, cache)
        next_tokens = engine_model.compute_logits(hidden).argmax(-1)
    return hidden.view(len(sequences), -1, hidden.shape[-1]), next_tokens.view(len(sequences), -1)


def _mtp_loss(engine_model, tokens, hidden, next_tokens, weight) -> torch.Tensor:
    """Cross-entropy of the MTP draft at t (hidden at t, token t+1) against the main model's pick at t+1."""
    batch, cache = _prefill(engine_model, tokens[:, 1:].tolist(), include_mtp=True)
    mtp_hidden = engine_model.mtp_forward(tokens[:, 1:].flatten(), hidden[:, :-1].flatten(0, 1), batch, cache)
    logits = engine_model.compute_logits(mtp_hidden)
    losses = torch.nn.functional.cross_entropy(logits, next_tokens[:, 1:].flatten(), reduction="none")
    return (losses * weight[:, :-1].flatten()).sum() / weight[:, :-1].sum()


def _checkpoint_names(mtp_params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Engine parameters back to checkpoint tensors: stacked experts split per expert, the rest as is."""
    tensors = {}
    for name, t in mtp_params.items():
        prefix, _, leaf = name.removesuffix(".weight").rpartition(".")
        if leaf in ("w_up", "w_down"):
            proj = "up_proj" if leaf == "w_up" else "down_proj"
            tensors |= {f"{prefix}.experts.{e}.{proj}.weight": t[e].clone() for e in range(t.shape[0])}
        else:
            tensors[name] = t.clone()
    return tensors


def distill_mtp_head(directory: Path, hf_model, seed: int) -> dict[str, torch.Tensor]:
    """Train the `mtp.*` tensors of the checkpoint in `directory`; the main model stays fixed.

    Why: a random MTP head never drafts a token the main model accepts, so speculative
    decoding on the tiny model always reports an acceptance rate of 0 and exercises no
    accepted-draft path outside oracle tests. Here the head learns, from the main model's own
    greedy continuations of seeded random prompts, to predict at position t (main hidden at t,
    token t+1) the main model's greedy pick after t+1. The real engine model is trained in
    fp32 on one CPU thread with a fixed seed (a few seconds, deterministic); only the MTP
    parameters take gradients. Returns the trained tensors under their checkpoint names.
    """
    from nemodeploy.engine.loader import load_model

    gen = torch.Generator().manual_seed(seed + 3)
    engine_model = load_model(directory, torch.float32)
    sequences = _greedy_sequences(hf_model, gen, engine_model.config.vocab_size)
    by_len: dict[int, list] = {}
    for row, prompt_len in sequences:
        by_len.setdefault(len(row), []).append((row, prompt_len))
    groups = []
    for rows in by_len.values():
        tokens = torch.tensor([r for r, _ in rows])
        hidden, next_tokens = _main_model_view(engine_model, tokens.tolist())
        # drafts are made from the last prompt position on: weight those positions only
        weight = torch.stack([(torch.arange(tokens.shape[1]) >= p - 1).float() for _, p in rows])
        groups.append((tokens, hidden, next_tokens, weight))
    params = dict(engine_model.mtp.named_parameters(prefix="mtp"))
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params.values(), lr=DISTILL_LR)
    for step in range(DISTILL_STEPS):
        tokens, hidden, next_tokens, weight = groups[step % len(groups)]
        pick = torch.randperm(tokens.shape[0], generator=gen)[:DISTILL_BATCH]
        loss = _mtp_loss(engine_model, tokens[pick], hidden[pick], next_tokens[pick], weight[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return _checkpoint_names({name: p.detach() for name, p in params.items()})


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    """Byte-level BPE trained on the built-in text (deterministic), plus tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TRAINING_TEXT.splitlines(), trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    saved = json.loads((directory / "tokenizer.json").read_text())
    for token in saved["added_tokens"]:
        token["special"] = token["content"] not in TEXT_TOKENS
    (directory / "tokenizer.json").write_text(json.dumps(saved, ensure_ascii=False))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "add_bos_token": False,
        "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_tiny_checkpoint(directory: str | Path, seed: int = 0, distill_mtp: bool = False) -> Path:
    """Write the tiny model (config.json, model.safetensors with `mtp.*`, tokenizer) to `directory`.

    distill_mtp: train the MTP head against the main model (`distill_mtp_head`, a few seconds)
    instead of leaving it random. The main model's weights are the same either way.
    """
    from safetensors.torch import load_file
    from transformers import NemotronHForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = json.loads(SPEC.read_text())
    torch.manual_seed(seed)
    model = NemotronHForCausalLM(_hf_config(spec))
    randomize_(model, seed)
    model.save_pretrained(directory)
    with tempfile.TemporaryDirectory() as work:
        tensors = load_file(directory / "model.safetensors") | _mtp_tensors(spec, seed, Path(work))
    _save(directory, tensors)
    if distill_mtp:
        with _one_thread():
            trained = distill_mtp_head(directory, model.eval(), seed)
        if trained.keys() != {k for k in tensors if k.startswith("mtp.")}:
            raise RuntimeError("distilled MTP tensors do not match the checkpoint's mtp.* names")
        _save(directory, tensors | trained)
    write_tokenizer(directory, spec["vocab_size"])
    return directory


# ModelOpt algorithms the quantized variant can be written with: MIXED_PRECISION is the layout of
# NVIDIA's Nemotron 3 NVFP4 checkpoints (routed experts NVFP4, shared experts FP8, the rest kept).
MODELOPT_ALGOS = ("MIXED_PRECISION", "NVFP4", "FP8")
# modelopt 0.47 with transformers 5 maps the module names of its config through the checkpoint's
# renaming with a sentinel suffix that the `model.` -> `backbone.` rule itself rewrites, so the
# names come out as "<module>.\x00backbone.pt_name_sentinel"; the writer strips that suffix.
_MANGLED_SENTINEL = ".\x00backbone.pt_name_sentinel"


def _modelopt_recipe(algo: str, kv_cache_fp8: bool = False) -> dict:
    """modelopt's quantize config for `algo` (from its own NVFP4 / FP8 defaults), plus its FP8 KV-cache
    quantizers (per-tensor k / v scales) when asked."""
    import modelopt.torch.quantization as mtq

    recipe = _weights_recipe(algo)
    if not kv_cache_fp8:
        return recipe
    kv = [e for e in mtq.FP8_KV_CFG["quant_cfg"] if e["quantizer_name"] != "*"]
    return dict(recipe, quant_cfg=list(recipe["quant_cfg"]) + kv)


def _weights_recipe(algo: str) -> dict:
    import modelopt.torch.quantization as mtq

    if algo == "NVFP4":
        return mtq.NVFP4_DEFAULT_CFG
    if algo == "FP8":
        return mtq.FP8_DEFAULT_CFG

    def quantizers(default: dict) -> list[dict]:
        return [e for e in default["quant_cfg"] if e["quantizer_name"] in ("*weight_quantizer", "*input_quantizer")]

    entries = [{"quantizer_name": "*", "enable": False}]
    for pattern, default in (("*mixer.experts*", mtq.NVFP4_DEFAULT_CFG), ("*shared_experts*", mtq.FP8_DEFAULT_CFG)):
        entries += [dict(e, quantizer_name=pattern + e["quantizer_name"].lstrip("*")) for e in quantizers(default)]
    return {"quant_cfg": entries, "algorithm": "max"}


def _repair_modelopt_names(quantization: dict) -> None:
    if "exclude_modules" in quantization or "ignore" in quantization:
        key = "exclude_modules" if "exclude_modules" in quantization else "ignore"
        quantization[key] = [name.removesuffix(_MANGLED_SENTINEL) for name in quantization[key]] + ["mtp*"]
    if "quantized_layers" in quantization:
        quantization["quantized_layers"] = {k.removesuffix(_MANGLED_SENTINEL): v for k, v in quantization["quantized_layers"].items()}


def write_tiny_modelopt_checkpoint(directory: str | Path, algo: str = "MIXED_PRECISION", seed: int = 0,
                                   kv_cache_fp8: bool = False) -> Path:
    """The tiny model quantized by NVIDIA ModelOpt (nvidia-modelopt, on this CPU) and exported by its
    `export_hf_checkpoint`: config.json with `quantization_config`, hf_quant_config.json, the
    quantized model.safetensors, plus the tokenizer and the unquantized `mtp.*` head (excluded as
    `mtp*`, as NVIDIA's checkpoints keep MTP in BF16).

    algo: MIXED_PRECISION (routed experts NVFP4, shared experts FP8, as Nemotron 3's NVFP4
    checkpoints), NVFP4 or FP8 (modelopt's defaults: every linear but the router, conv and lm_head).
    kv_cache_fp8: also calibrate FP8 KV-cache scales (`k_proj.k_scale` / `v_proj.v_scale`).
    Calibration: max over seeded random prompts. Weights are those of `write_tiny_checkpoint(seed)`.
    """
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint
    from safetensors.torch import load_file
    from transformers import NemotronHForCausalLM

    if algo not in MODELOPT_ALGOS:
        raise ValueError(f"unknown algo {algo!r}; known: {', '.join(MODELOPT_ALGOS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = json.loads(SPEC.read_text())
    torch.manual_seed(seed)
    config = _hf_config(spec)
    config.architectures = spec["architectures"]  # modelopt's export reads it
    model = NemotronHForCausalLM(config)
    randomize_(model, seed)
    model.eval()
    gen = torch.Generator().manual_seed(seed + 4)
    calibration = torch.randint(len(SPECIAL_TOKENS), spec["vocab_size"], (8, 24), generator=gen)

    def calibrate(m) -> None:
        with torch.no_grad():
            for row in calibration:
                m(row[None])

    mtq.quantize(model, _modelopt_recipe(algo, kv_cache_fp8), calibrate)
    export_hf_checkpoint(model, export_dir=directory)
    legacy = json.loads((directory / "hf_quant_config.json").read_text())
    _repair_modelopt_names(legacy["quantization"])
    (directory / "hf_quant_config.json").write_text(json.dumps(legacy, indent=4) + "\n")
    hf_config = json.loads((directory / "config.json").read_text())
    _repair_modelopt_names(hf_config["quantization_config"])
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as work:
        tensors = load_file(directory / "model.safetensors") | _mtp_tensors(spec, seed, Path(work))
    _save(directory, tensors)
    write_tokenizer(directory, spec["vocab_size"])
    return directory


def _save(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, directory / "model.safetensors", metadata={"format": "pt"})


@contextlib.contextmanager
def _one_thread():
    """One intra-op thread while distilling: same float results on any machine, and no core hogging."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_model_dir() -> Path:
    """The tiny model's directory in the cache, written on first use (atomically: temp dir, rename).

    Its MTP head is distilled (see `distill_mtp_head`). A cached copy from before that (no
    DISTILLED_MARKER) is replaced; its main-model weights are the same, only `mtp.*` differ.
    """
    target = cache_dir() / "models" / "nemotron-h-tiny"
    if (target / DISTILLED_MARKER).exists():
        _refresh_tokenizer(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".nemotron-h-tiny-", dir=target.parent))
    try:
        write_tiny_checkpoint(staging, distill_mtp=True)
        (staging / DISTILLED_MARKER).write_text("MTP head distilled from the main model (nemodeploy.engine.tiny)\n")
        _retire_stale(target)
        os.rename(staging, target)
    except OSError:
        if not (target / DISTILLED_MARKER).exists():  # not a lost race with another writer
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _refresh_tokenizer(target: Path) -> None:
    """A cached copy written with an older chat template gets this one's tokenizer files (weights unchanged)."""
    config = json.loads((target / "tokenizer_config.json").read_text())
    if config.get("chat_template") == CHAT_TEMPLATE:
        return
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=target))
    try:
        write_tokenizer(staging, json.loads((target / "config.json").read_text())["vocab_size"])
        for name in ("tokenizer.json", "tokenizer_config.json"):  # the config last: it marks the refresh done
            os.replace(staging / name, target / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _retire_stale(target: Path) -> None:
    """Move a cached tiny model without a distilled head out of the way (then delete it)."""
    if not target.exists() or (target / DISTILLED_MARKER).exists():
        return
    retired = Path(tempfile.mkdtemp(prefix=".nemotron-h-tiny-stale-", dir=target.parent))
    try:
        os.rename(target, retired / "model")
    except FileNotFoundError:  # another writer retired it first
        pass
    shutil.rmtree(retired, ignore_errors=True)
