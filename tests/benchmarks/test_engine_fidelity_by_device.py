"""The engine against transformers where the GPU suite runs it: fp32 and bf16, on CPU and on CUDA,
from a plain checkpoint and from a ModelOpt NVFP4 one.

tests/engine/test_model_fidelity.py holds the engine to transformers in fp32 on CPU, element by
element. Here the same kind of comparison runs on CUDA, where `get_kernels` swaps in the Triton
kernels, and in bf16; and, on machines without a GPU, on `interpreter`: the engine on CPU with the
op table it gets on CUDA (the Triton kernels) run by Triton's interpreter, which checks how the
engine calls its kernels before a GPU does. The reference is transformers in fp32 on CPU; the error is
||engine - reference|| / ||reference|| over every position's logits. Checkpoints: `tiny` (the
tiny spec without MTP, fp32 weights) and `modelopt-nvfp4` (the tiny model quantized by NVIDIA
ModelOpt, MIXED_PRECISION: NVFP4 routed experts, FP8 shared experts; the engine loads it as
stored, transformers runs the copy ModelOpt dequantized). Where ModelOpt is not installed (the
GPU machine) the pair comes from benchmarks/.vendor/checkpoints (benchmarks/gpu_prepare.py).

Bounds: fp32 1e-3, which float32 arithmetic meets by orders of magnitude (about 1e-6 on CPU) and
bf16 or tf32 operands miss: this random model amplifies rounding about thirtyfold. bf16: at most
twice the error of transformers itself run in bf16 on the same tokens (about 0.13 here, for that
reason), i.e. the engine in bf16 is as faithful as the reference implementation in bf16. Two
sequences of different lengths prefill together, then decode together, so the batched decode
path (conv / state update per row) is covered too.

CUDA cases skip without a GPU; benchmarks/gpu_suite.sh runs them on one and records the errors
(printed with -s).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
import sys
from pathlib import Path

import pytest
import torch

from nemodeploy.engine.batch import BatchMetadata
from nemodeploy.engine.cache import HybridCache
from nemodeploy.engine.loader import load_model
from nemodeploy.engine.tiny import SPEC, _hf_config, randomize_

ROOT = Path(__file__).resolve().parents[2]
PREPARED = ROOT / "benchmarks" / ".vendor" / "checkpoints"
FP32_BOUND, BF16_FACTOR = 1e-3, 2.0
BLOCK_SIZE, BLOCKS_PER_SEQ = 4, 16
PROMPT_LENS, DECODE_STEPS = (13, 21), 5

CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
INTERPRETER = [pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
               pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA cases run these kernels for real")]
FP32, BF16 = torch.float32, torch.bfloat16
DTYPE_NAMES = {FP32: "fp32", BF16: "bf16"}
CASES = [  # (checkpoint, device, dtype): the interpreter is slow, so it runs one dtype per checkpoint
    ("tiny", "cpu", FP32), ("tiny", "cpu", BF16), ("tiny", "interpreter", FP32),
    ("tiny", "cuda", FP32), ("tiny", "cuda", BF16),
    ("modelopt-nvfp4", "cpu", FP32), ("modelopt-nvfp4", "cpu", BF16), ("modelopt-nvfp4", "interpreter", BF16),
    ("modelopt-nvfp4", "cuda", FP32), ("modelopt-nvfp4", "cuda", BF16),
]


def _tiny(tmp: Path) -> tuple[Path, Path]:
    from transformers import NemotronHForCausalLM

    spec = json.loads(SPEC.read_text()) | {"num_nextn_predict_layers": 0}
    spec.pop("mtp_hybrid_override_pattern")
    torch.manual_seed(0)
    model = NemotronHForCausalLM(_hf_config(spec))
    randomize_(model, seed=1)
    model.save_pretrained(tmp)
    return tmp, tmp


def _modelopt_nvfp4(tmp: Path) -> tuple[Path, Path]:
    prepared = PREPARED / "modelopt-mixed", PREPARED / "modelopt-mixed-dequantized"
    if importlib.util.find_spec("modelopt") is None:
        if not all((p / "config.json").exists() for p in prepared):
            pytest.skip("nvidia-modelopt is not installed and benchmarks/gpu_prepare.py has not written the checkpoints")
        return prepared
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_prepare import write_modelopt_pair

    return write_modelopt_pair(tmp)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """kind -> (directory the engine loads, transformers on the reference weights in fp32, the same in bf16)."""
    from transformers import NemotronHForCausalLM

    made = {}

    def get(kind: str):
        if kind not in made:
            engine_dir, reference_dir = {"tiny": _tiny, "modelopt-nvfp4": _modelopt_nvfp4}[kind](tmp_path_factory.mktemp(kind))
            hf = NemotronHForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()
            made[kind] = engine_dir, hf, NemotronHForCausalLM.from_pretrained(reference_dir, dtype=torch.bfloat16).eval()
        return made[kind]

    return get


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected).norm() / expected.norm()).item()


def engine_logits(directory, dtype: torch.dtype, device: str, prompts: list[list[int]]):
    """Each sequence's logits at every position and its tokens: one prefill of all prompts, then
    greedy decode steps of all sequences together."""
    model = load_model(directory, dtype, device, with_mtp=False)
    cache = HybridCache(model.config, len(prompts) * BLOCKS_PER_SEQ, BLOCK_SIZE, len(prompts), dtype, device)
    tables = [list(range(s * BLOCKS_PER_SEQ, (s + 1) * BLOCKS_PER_SEQ)) for s in range(len(prompts))]
    sequences = [list(p) for p in prompts]
    out: list[list[torch.Tensor]] = [[] for _ in prompts]
    new = sequences
    for step in range(DECODE_STEPS + 1):
        batch = BatchMetadata.build(
            query_lens=[len(t) for t in new], context_lens=[len(s) - len(t) for s, t in zip(sequences, new)],
            block_tables=tables, mamba_slots=list(range(len(prompts))), block_size=BLOCK_SIZE, device=device,
            num_decodes=len(prompts) if step else 0,
        )
        ids = torch.tensor([t for tokens in new for t in tokens], device=device)
        with torch.no_grad():
            logits = model.compute_logits(model(ids, batch, cache)).cpu()
        parts = logits.split([len(t) for t in new])
        for s, part in enumerate(parts):
            out[s].append(part)
        new = [[int(part[-1].argmax())] for part in parts]
        for s, token in enumerate(new):
            sequences[s] += token
    return [torch.cat(parts) for parts in out], sequences


def interpreted_engine_logits(directory, dtype: torch.dtype, prompts: list[list[int]]):
    """engine_logits on CPU with the op table the engine gets on CUDA, its Triton kernels run by
    Triton's interpreter. Call it in a process started with TRITON_INTERPRET=1: Triton reads the
    variable when triton.language is first imported, which in a test session has happened long before."""
    from nemodeploy.engine import loader
    from nemodeploy.engine.kernels import TORCH_KERNELS, triton_ops

    table = dataclasses.replace(TORCH_KERNELS, **triton_ops.KERNELS)
    loader.get_kernels = lambda device: table
    return engine_logits(directory, dtype, "cpu", prompts)


@pytest.mark.parametrize("kind, device, dtype", [
    pytest.param(kind, device, dtype, id=f"{kind}-{device}-{DTYPE_NAMES[dtype]}",
                 marks={"cuda": CUDA, "interpreter": INTERPRETER}.get(device, []))
    for kind, device, dtype in CASES
])
def test_prefill_and_decode_logits_match_transformers(monkeypatch, checkpoints, kind, device, dtype):
    directory, hf, hf_bf16 = checkpoints(kind)
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, hf.config.vocab_size, (n,), generator=gen).tolist() for n in PROMPT_LENS]
    if device == "interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # inherited by the fresh process
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            logits, sequences = pool.submit(interpreted_engine_logits, directory, dtype, prompts).result()
    else:
        logits, sequences = engine_logits(directory, dtype, device, prompts)
    for got, tokens in zip(logits, sequences):
        ids = torch.tensor([tokens[:-1]])
        with torch.no_grad():
            expected = hf(ids, use_cache=False, logits_to_keep=0).logits[0]
            bound = FP32_BOUND if dtype == torch.float32 else BF16_FACTOR * relative_error(
                hf_bf16(ids, use_cache=False, logits_to_keep=0).logits[0], expected)
        assert torch.isfinite(got).all()
        error = relative_error(got, expected)
        print(f"fidelity {kind} {device} {DTYPE_NAMES[dtype]} {len(tokens) - 1} positions: "
              f"relative error {error:.2e} (bound {bound:.2e})")
        assert error < bound
