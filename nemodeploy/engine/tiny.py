"""A tiny seeded random Nemotron-H in HF layout, with a real (locally trained) tokenizer.

The weights come from transformers' own `NemotronHForCausalLM(...).save_pretrained`, so the
tensor names are the checkpoint's (`backbone.*`, `lm_head.weight`). transformers has no
MTP module, so the MTP head is added in vLLM's `mtp.*` naming (see engine/model/mtp.py):
its layers are built as transformers layers of kinds `mtp_layer_types` and renamed
`backbone.layers.N.*` -> `mtp.layers.N.*`, plus enorm / hnorm / eh_proj on layer 0 and
final_layernorm on the last. transformers ignores `mtp.*` when loading.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

SPEC = Path(__file__).resolve().parent.parent / "models" / "specs" / "nemotron-h-tiny.json"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and not enable_thinking -%}{{- '<think></think>' -}}"
    "{%- else -%}{{- '<think>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

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


def write_tiny_checkpoint(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny model (config.json, model.safetensors with `mtp.*`, tokenizer) to `directory`."""
    from safetensors.torch import load_file, save_file
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
    save_file({k: v.contiguous() for k, v in tensors.items()}, directory / "model.safetensors", metadata={"format": "pt"})
    write_tokenizer(directory, spec["vocab_size"])
    return directory


def cache_root() -> Path:
    if os.environ.get("NEMODEPLOY_CACHE"):
        return Path(os.environ["NEMODEPLOY_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "nemodeploy"
    return Path.home() / ".cache" / "nemodeploy"


def tiny_model_dir() -> Path:
    """The tiny model's directory in the cache, written on first use (atomically: temp dir, rename)."""
    target = cache_root() / "models" / "nemotron-h-tiny"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".nemotron-h-tiny-", dir=target.parent))
    try:
        write_tiny_checkpoint(staging)
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").exists():  # not a lost race with another writer
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
