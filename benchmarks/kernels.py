"""Kernel benchmark: nemodeploy's Triton kernels at Nemotron 3 Ultra widths on one GPU.

Every kernel is timed against (1) its PyTorch reference in ``kernels/torch_ops.py``, (2) the best
public kernel: vLLM's Triton SSD and selective-state-update kernels, ``torch._grouped_mm`` for the
expert GEMMs, and (3) the roofline: achieved GB/s and TFLOP/s as a fraction of the copy bandwidth
and bf16 matmul peak measured in the same run. Times are medians of CUDA-graph replays; each graph
cycles through enough input copies that the working set exceeds L2.

    python benchmarks/kernels.py --setup    # once, where PyPI is reachable: vendors vLLM's files
    python benchmarks/kernels.py            # on the GPU: prints the table
    python benchmarks/kernels.py --dry-run  # here, on CPU: every row at tiny widths under Triton's
                                            # interpreter, wall-clock timed (exercises the code, not the speed)

``--json PATH`` also writes every row (times, ratios, roofline shares, target met or not) as JSON.
``--setup`` takes only the Triton files of ``vllm/model_executor/layers/mamba/ops`` from the
vllm wheel (``pip download vllm --no-deps``) and einops into benchmarks/.vendor/ (git-ignored;
carry it to a GPU machine without network), with small stand-ins for the few ``vllm`` modules
those files import, so none of vLLM's C++ extension is needed.
"""

import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent
VENDOR = ROOT / ".vendor"
VLLM_VERSION = "0.33.0"
VLLM_OPS = "vllm/model_executor/layers/mamba/ops/"

DEVICE = "cuda"  # --dry-run: "cpu", the kernels under Triton's interpreter
# Ultra's widths
HIDDEN, LATENT, FFN, EXPERTS, TOP_K, SCALING = 8192, 2048, 5120, 512, 22, 5.0
HEADS, HEAD_DIM, GROUPS, STATE, CHUNK = 256, 64, 8, 128, 128
CONV_CHANNELS = HEADS * HEAD_DIM + 2 * GROUPS * STATE  # 18432
Q_HEADS, KV_HEADS, ATTN_DIM, PAGE, CONTEXT = 64, 2, 128, 16, 1024  # attention at tp 1, 1024-token contexts
DECODE_TOKENS, PREFILL_TOKENS = (1, 16, 64), 8192
# --dry-run: the same rows at widths the interpreter gets through in seconds
TINY = dict(HIDDEN=64, LATENT=32, FFN=64, EXPERTS=8, TOP_K=2, HEADS=4, HEAD_DIM=16, GROUPS=2, STATE=16, CHUNK=16,
            DECODE_TOKENS=(1, 4), PREFILL_TOKENS=48, Q_HEADS=4, KV_HEADS=2, ATTN_DIM=16, CONTEXT=64)
DT_LIMIT = (0.0, float("inf"))
L2_FLUSH_BYTES = 256 << 20


def _sweep_configs():
    from nemodeploy.engine.kernels.triton_moe import GemmConfig as G

    nvfp4 = [G(16, 128, 128, 4, 4), G(16, 128, 128, 4, 4, swap_ab=True), G(16, 256, 128, 4, 4, swap_ab=True),
             G(16, 64, 128, 4, 4, swap_ab=True), G(16, 128, 256, 4, 3, swap_ab=True), G(16, 128, 128, 8, 4, swap_ab=True)]
    prefill = [G(128, 256, 64, 8, 4), G(128, 256, 32, 8, 5), G(64, 256, 64, 8, 4)]
    return nvfp4, prefill


# ---------------------------------------------------------------- vendoring (--setup)

# Stand-ins for the vllm modules the ops files import: each holds just what those files use.
SHIMS = {
    "vllm/__init__.py": "",
    "vllm/_custom_ops.py": "",
    "vllm/envs.py": "VLLM_TUNED_CONFIG_FOLDER = None\n",
    "vllm/triton_utils/__init__.py": (
        "import os\nimport types\n\nimport triton\nimport triton.language as tl\n\nHAS_TRITON = True\n"
        "if os.environ.get('TRITON_INTERPRET') == '1':  # --dry-run: the interpreter cannot benchmark configs\n"
        "    _autotune = triton.autotune\n"
        "    triton = types.SimpleNamespace(**vars(triton))\n"
        "    triton.autotune = lambda configs, **kwargs: _autotune(configs[:1], **kwargs)\n"
    ),
    "vllm/logger.py": (
        "import functools\nimport logging\n\n\ndef init_logger(name):\n"
        "    logger = logging.getLogger(name)\n"
        "    for level in ('debug', 'info', 'warning'):  # vLLM's *_once: log each message once\n"
        "        log = getattr(logger, level)\n"
        "        once = functools.lru_cache(None)(lambda msg, *args, log=log: log(msg, *args))\n"
        "        setattr(logger, f'{level}_once', lambda msg, *args, scope=None, once=once: once(msg, *args))\n"
        "    return logger\n"
    ),
    "vllm/utils/__init__.py": "",
    "vllm/utils/platform_utils.py": (
        "import torch\n\n\ndef get_device_name_as_file_name():\n"
        "    return torch.cuda.get_device_name().replace(' ', '_') if torch.cuda.is_available() else 'cpu'\n"
    ),
    "vllm/platforms/__init__.py": (
        "import os\n\nimport torch\n\n\nclass _Platform:\n"
        "    def is_cuda(self):\n        return torch.cuda.is_available()\n\n"
        "    def is_cpu(self):  # under Triton's interpreter (--dry-run) the Triton path runs on CPU tensors\n"
        "        return not torch.cuda.is_available() and os.environ.get('TRITON_INTERPRET') != '1'\n\n"
        "    def is_rocm(self):\n        return False\n\n"
        "    def is_xpu(self):\n        return False\n\n"
        "    def is_device_capability(self, capability):\n"
        "        return torch.cuda.get_device_capability() == tuple(divmod(int(capability), 10))\n\n"
        "    def has_device_capability(self, capability):\n"
        "        return torch.cuda.get_device_capability() >= tuple(divmod(int(capability), 10))\n\n\n"
        "current_platform = _Platform()\n"
    ),
    "vllm/v1/__init__.py": "",
    "vllm/v1/attention/__init__.py": "",
    "vllm/v1/attention/backends/__init__.py": "",
    "vllm/v1/attention/backends/utils.py": "NULL_BLOCK_ID = 0\nPAD_SLOT_ID = -1\n",
    "vllm/model_executor/__init__.py": "",
    "vllm/model_executor/layers/__init__.py": "",
    "vllm/model_executor/layers/mamba/__init__.py": "",
}


def _pip_download(requirement: str, into: str) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", requirement, "--no-deps", "-d", into], check=True)
    return Path(glob.glob(f"{into}/*.whl")[0])


def setup_vendor(version: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(_pip_download(f"vllm=={version}", f"{tmp}/vllm")) as wheel:
            names = [n for n in wheel.namelist()
                     if n.startswith(VLLM_OPS) and (n.endswith(".py") or n.endswith(".json"))]
            wheel.extractall(VENDOR, members=names)
        with zipfile.ZipFile(_pip_download("einops", f"{tmp}/einops")) as wheel:
            wheel.extractall(VENDOR, members=[n for n in wheel.namelist() if n.startswith("einops/")])
    for path, text in SHIMS.items():
        target = VENDOR / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (VENDOR / "VERSION").write_text(f"vllm=={version}\n")
    print(f"vendored {len(names)} files of vllm {version} into {VENDOR}")


def load_vllm() -> tuple[object | None, str]:
    """(module namespace with selective_state_update and mamba_chunk_scan_combined_varlen, note)."""
    if not (VENDOR / "VERSION").exists():
        return None, "not vendored: run --setup"
    sys.path.insert(0, str(VENDOR))
    try:
        from vllm.model_executor.layers.mamba.ops import mamba_ssm, ssd_combined
    except Exception as exc:  # report the baseline as missing, keep the rest of the table
        return None, f"import failed: {exc!r}"[:120]
    ns = argparse.Namespace(selective_state_update=mamba_ssm.selective_state_update,
                            chunk_scan=ssd_combined.mamba_chunk_scan_combined_varlen)
    return ns, (VENDOR / "VERSION").read_text().strip()


# ---------------------------------------------------------------- timing


def _graph_time_us(make_call: Callable[[int], Callable[[], object]], copies: int, iters: int) -> float:
    """Median per-call time of a CUDA graph that runs make_call(i)() for every copy i."""
    calls = [make_call(i) for i in range(copies)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls * 2:  # warm up: compile, autotune, allocate
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / copies)
    return statistics.median(times)


def _eager_time_us(call: Callable[[], object], iters: int) -> float:
    call()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return statistics.median(times)


def _wall_time_us(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e6


def time_us(make_call: Callable[[int], Callable[[], object]], bytes_per_call: float, iters: int = 20) -> tuple[float, str]:
    """CUDA-graph median; falls back to eager timing for host-syncing references (marked '*').

    On CPU (--dry-run) one wall-clock call (marked '~'): it proves the call runs, not how fast.
    """
    if DEVICE == "cpu":
        return _wall_time_us(make_call(0)), "~"
    copies = max(1, min(8, math.ceil(L2_FLUSH_BYTES / max(bytes_per_call, 1))))
    try:
        return _graph_time_us(make_call, copies, iters), ""
    except RuntimeError:
        torch.cuda.synchronize()
        return _eager_time_us(make_call(0), max(3, iters // 4)), "*"


def measure_peaks() -> tuple[float, float]:
    """(copy GB/s counting read + write, bf16 dense matmul TFLOP/s) on this GPU, now.

    The copy is an elementwise kernel (x * 1 into another buffer): inside a CUDA graph ``copy_``
    becomes a memcpy node, which measured 2.7 TB/s on an H200 where kernels move ~4.3."""
    nbytes, n = (1 << 30, 8192) if DEVICE == "cuda" else (1 << 20, 256)
    src = torch.randn(nbytes // 4, device=DEVICE)
    dst = torch.empty_like(src)
    copy_us, _ = time_us(lambda i: lambda: torch.mul(src, 1.0, out=dst), 2 * nbytes)
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    mm_us, _ = time_us(lambda i: lambda: a @ b, 0)
    return 2 * nbytes / copy_us / 1e3, 2 * n**3 / mm_us / 1e6


# ---------------------------------------------------------------- cases


@dataclass
class Row:
    kernel: str
    shape: str
    ours: Callable[[int], Callable[[], object]]
    bytes: float  # bytes the kernel must move (roofline numerator)
    flops: float = 0.0
    reference: Callable[[int], Callable[[], object]] | None = None
    baseline: tuple[str, Callable[[int], Callable[[], object]]] | None = None
    # (goal, text): goal > 0 is a speed-up over the baseline; goal < 0 asks for at least -goal
    # of the measured copy bandwidth
    target: tuple[float, str] | None = None
    breakdown: bool = False  # also list the time of each GPU kernel in ours and the baseline


def _bf16(*shape, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(torch.bfloat16)


class Experts:
    """All 512 experts of one LatentMoE layer at Ultra's widths, bf16 and NVFP4 (random codes)."""

    def __init__(self):
        from nemodeploy.engine.kernels.nvfp4 import NVFP4Weight

        self.w_up = _bf16(EXPERTS, FFN, LATENT, scale=LATENT**-0.5)
        self.w_down = _bf16(EXPERTS, LATENT, FFN, scale=FFN**-0.5)

        def nvfp4(n, k):
            packed = torch.randint(0, 256, (EXPERTS, n, k // 2), dtype=torch.uint8, device=DEVICE)
            scales = (torch.rand(EXPERTS, n, k // 16, device=DEVICE) + 0.5).to(torch.float8_e4m3fn).view(torch.uint8)
            return NVFP4Weight(packed, scales, torch.full((EXPERTS,), k**-0.5 / 3, device=DEVICE))

        self.q_up, self.q_down = nvfp4(FFN, LATENT), nvfp4(LATENT, FFN)


def _routing(tokens):
    from nemodeploy.engine.kernels import triton_moe

    logits = torch.randn(tokens, EXPERTS, device=DEVICE)
    bias = torch.randn(EXPERTS, device=DEVICE) * 0.01
    weights, ids = triton_moe.moe_route(logits, bias, TOP_K, 1, 1, True, SCALING)
    return logits, bias, weights, ids


def _grouped_mm_call(x, ids, w_up, w_down):
    """torch._grouped_mm on tokens already sorted by expert: both GEMMs + relu2, no routing."""
    flat = ids.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    x_sorted = x[order // TOP_K].contiguous()
    offs = torch.bincount(flat, minlength=EXPERTS).cumsum(0).to(torch.int32)

    def call():
        h = torch._grouped_mm(x_sorted, w_up.transpose(1, 2), offs=offs)
        h = torch.relu(h).square()
        return torch._grouped_mm(h, w_down.transpose(1, 2), offs=offs)

    return call


def moe_rows(experts: Experts) -> list[Row]:
    from nemodeploy.engine.kernels import torch_ops, triton_moe, triton_nvfp4

    rows = []
    for tokens in (*DECODE_TOKENS, PREFILL_TOKENS):
        logits, bias, weights, ids = _routing(tokens)
        rows.append(Row(
            "moe_route", f"T={tokens} top{TOP_K}/{EXPERTS}",
            lambda i, a=(logits, bias): lambda: triton_moe.moe_route(*a, TOP_K, 1, 1, True, SCALING),
            bytes=logits.numel() * 4,
            reference=lambda i, a=(logits, bias): lambda: torch_ops.moe_route(*a, TOP_K, 1, 1, True, SCALING),
        ))
    for tokens in (*DECODE_TOKENS, PREFILL_TOKENS):
        x = _bf16(tokens, LATENT)
        logits, bias, weights, ids = _routing(tokens)
        active = ids.unique().numel()
        flops = 2 * 2 * tokens * TOP_K * LATENT * FFN
        decode = tokens in DECODE_TOKENS
        pairs = tokens * TOP_K

        def ours(i, x=x, logits=logits, bias=bias):
            def call():
                w, e = triton_moe.moe_route(logits, bias, TOP_K, 1, 1, True, SCALING)
                return triton_moe.routed_experts(x, experts.w_up, experts.w_down, w, e, 0)
            return call

        rows.append(Row(
            "latent_moe bf16 (+routing)", f"T={tokens}", ours,
            bytes=active * 2 * FFN * LATENT * 2 + pairs * (LATENT + FFN) * 2 * 2, flops=flops,
            reference=(lambda i, a=(x, weights, ids): lambda: torch_ops.routed_experts(
                a[0], experts.w_up, experts.w_down, a[1], a[2], 0)) if decode else None,
            baseline=("torch._grouped_mm", lambda i, a=(x, ids): _grouped_mm_call(a[0], a[1], experts.w_up, experts.w_down)),
            target=(1.0, ">=1.0x grouped_mm") if decode else (1.15, ">=1.15x grouped_mm"), breakdown=not decode,
        ))
        if decode:
            rows.append(Row(
                "latent_moe nvfp4 w4a16 (+routing)", f"T={tokens}",
                lambda i, a=(x, logits, bias): lambda: triton_nvfp4.routed_experts_nvfp4(
                    a[0], experts.q_up, experts.q_down,
                    *triton_moe.moe_route(a[1], a[2], TOP_K, 1, 1, True, SCALING), 0),
                bytes=active * 2 * FFN * LATENT * 4.5 / 8, flops=flops,
                baseline=("torch._grouped_mm bf16", lambda i, a=(x, ids): _grouped_mm_call(a[0], a[1], experts.w_up, experts.w_down)),
                target=(-0.8, ">=80% copy GB/s"),
            ))
    return rows


def _config_name(c) -> str:
    return f"{c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages}{' swap' if c.swap_ab else ''}"


def moe_sweep_rows(experts: Experts) -> list[Row]:
    """The MoE GEMMs under other tile configs than pick_config's (no targets): what to pick next."""
    from nemodeploy.engine.kernels import triton_moe, triton_nvfp4

    rows = []
    for tokens in (DECODE_TOKENS[0], DECODE_TOKENS[-1]):
        x = _bf16(tokens, LATENT)
        weights, ids = _routing(tokens)[2:]
        active = ids.unique().numel()
        for c in _sweep_configs()[0]:
            rows.append(Row(
                "sweep nvfp4 " + _config_name(c), f"T={tokens}",
                lambda i, a=(x, weights, ids), c=c: lambda: triton_nvfp4.routed_experts_nvfp4(
                    a[0], experts.q_up, experts.q_down, a[1], a[2], 0, config=c),
                bytes=active * 2 * FFN * LATENT * 4.5 / 8))
    x = _bf16(PREFILL_TOKENS, LATENT)
    weights, ids = _routing(PREFILL_TOKENS)[2:]
    for c in _sweep_configs()[1]:
        rows.append(Row(
            "sweep bf16 " + _config_name(c), f"T={PREFILL_TOKENS}",
            lambda i, a=(x, weights, ids), c=c: lambda: triton_moe.routed_experts(
                a[0], experts.w_up, experts.w_down, a[1], a[2], 0, config=c),
            bytes=EXPERTS * 2 * FFN * LATENT * 2, flops=2 * 2 * PREFILL_TOKENS * TOP_K * LATENT * FFN))
    return rows


def _ssm_step(batch):
    return dict(
        x=_bf16(batch, 1, HEADS, HEAD_DIM), dt=_bf16(batch, 1, HEADS, scale=0.5),
        B=_bf16(batch, 1, GROUPS, STATE), C=_bf16(batch, 1, GROUPS, STATE),
    )


def attention_rows() -> list[Row]:
    """Paged attention: decode over CONTEXT cached tokens a sequence, and one prefill of a prompt
    of that length, against the PyTorch reference (a loop over the sequences)."""
    from nemodeploy.engine.kernels import torch_ops, triton_attention

    rows = []
    for batch, new in [(b, 1) for b in DECODE_TOKENS] + [(1, CONTEXT)]:
        pages = CONTEXT // PAGE + 1
        k_cache, v_cache = _bf16(batch * pages, PAGE, KV_HEADS, ATTN_DIM), _bf16(batch * pages, PAGE, KV_HEADS, ATTN_DIM)
        tables = torch.randperm(batch * pages, device=DEVICE).to(torch.int32).view(batch, pages)
        seq_len = CONTEXT if new > 1 else CONTEXT + 1
        args = (_bf16(batch * new, Q_HEADS, ATTN_DIM), k_cache, v_cache, tables,
                torch.arange(batch + 1, device=DEVICE, dtype=torch.int32) * new,
                torch.full((batch,), seq_len, device=DEVICE, dtype=torch.int32), ATTN_DIM**-0.5)
        rows.append(Row(
            "paged attention " + ("prefill" if new > 1 else "decode"), f"B={batch} ctx={seq_len}",
            lambda i, a=args: lambda: triton_attention.paged_attention(*a),
            bytes=batch * seq_len * KV_HEADS * ATTN_DIM * 2 * 2,
            flops=batch * 2 * 2 * Q_HEADS * ATTN_DIM * new * (seq_len - (new - 1) / 2),
            reference=lambda i, a=args: lambda: torch_ops.paged_attention(*a),
        ))
    return rows


def mamba_rows(vllm) -> list[Row]:
    from nemodeploy.engine.kernels import torch_ops, triton_mamba

    A = -torch.rand(HEADS, device=DEVICE) - 0.5
    D = torch.randn(HEADS, device=DEVICE)
    dt_bias = torch.randn(HEADS, device=DEVICE) * 0.5
    rows = []
    # decode: selective state update, the pool big enough for 8 disjoint slot sets
    for batch in DECODE_TOKENS:
        pool = torch.randn(8 * batch + 1, HEADS, HEAD_DIM, STATE, device=DEVICE) * 0.1
        step = _ssm_step(batch)
        state_bytes = batch * HEADS * HEAD_DIM * STATE * 4 * 2
        slots = lambda i, b=batch: torch.arange(b, device=DEVICE) + 1 + i * b  # noqa: E731
        common = lambda i, s=step, b=batch: dict(  # noqa: E731
            **s, A=A, D=D, dt_bias=dt_bias, dt_limit=DT_LIMIT, state_indices=slots(i, b))

        def vllm_call(i, s=step, pool=pool, b=batch):
            out = torch.empty(b, HEADS, HEAD_DIM, device=DEVICE, dtype=torch.bfloat16)
            idx = slots(i, b).to(torch.int32)
            tie = lambda t: t[..., None].expand(*t.shape, HEAD_DIM)  # noqa: E731  (one dt per head, as vLLM's mixer)
            return lambda: vllm.selective_state_update(
                pool, s["x"][:, 0], tie(s["dt"][:, 0]), A[:, None, None].expand(HEADS, HEAD_DIM, STATE),
                s["B"][:, 0], s["C"][:, 0], D=tie(D), dt_bias=tie(dt_bias), dt_softplus=True,
                state_batch_indices=idx, out=out)

        rows.append(Row(
            "mamba state update", f"B={batch}",
            lambda i, c=common, p=pool: lambda: triton_mamba.selective_state_update(**c(i), ssm_states=p),
            bytes=state_bytes,
            reference=lambda i, c=common, p=pool: lambda: torch_ops.selective_state_update(**c(i), ssm_states=p),
            baseline=("vLLM selective_state_update", vllm_call) if vllm else None,
            target=(1.3 if batch == 1 else 1.0, f">={1.3 if batch == 1 else 1.0}x vLLM"),
        ))
    # prefill: SSD chunked scan over one 8192-token sequence
    tokens = PREFILL_TOKENS
    x, dt = _bf16(tokens, HEADS, HEAD_DIM), _bf16(tokens, HEADS, scale=0.5)
    Bm, Cm = _bf16(tokens, GROUPS, STATE), _bf16(tokens, GROUPS, STATE)
    pool = torch.zeros(2, HEADS, HEAD_DIM, STATE, device=DEVICE)
    qsl = torch.tensor([0, tokens], dtype=torch.int32, device=DEVICE)
    idx, init = torch.tensor([1], device=DEVICE), torch.tensor([False], device=DEVICE)
    chunks = triton_mamba.ssd_chunks(qsl, CHUNK)
    n_chunks = tokens // CHUNK
    ssd_args = dict(x=x, dt=dt, A=A, B=Bm, C=Cm, D=D, dt_bias=dt_bias, chunk_size=CHUNK, dt_limit=DT_LIMIT,
                    ssm_states=pool, query_start_loc=qsl, state_indices=idx, has_initial_state=init)

    def vllm_ssd(i):
        out = torch.empty_like(x)
        kwargs = dict(cu_seqlens=qsl, cu_chunk_seqlens=torch.arange(0, tokens + 1, CHUNK, dtype=torch.int32, device=DEVICE),
                      last_chunk_indices=torch.tensor([n_chunks - 1], device=DEVICE),
                      seq_idx=torch.zeros(n_chunks, dtype=torch.int32, device=DEVICE), out=out,
                      D=D, dt_bias=dt_bias, dt_softplus=True, dt_limit=DT_LIMIT)
        return lambda: vllm.chunk_scan(x, dt, A, Bm, Cm, CHUNK, **kwargs)

    ssd_bytes = tokens * (HEADS * HEAD_DIM * (2 + 4) + HEADS * 2 + 2 * GROUPS * STATE * 2)
    rows.append(Row(
        "ssd chunk scan", f"T={tokens}",
        lambda i: lambda: triton_mamba.ssd_chunk_scan_varlen(**ssd_args, chunks=chunks),
        bytes=ssd_bytes,
        flops=n_chunks * HEADS * (2 * CHUNK * CHUNK * (STATE + HEAD_DIM) + 4 * CHUNK * HEAD_DIM * STATE),
        reference=lambda i: lambda: torch_ops.ssd_chunk_scan_varlen(**ssd_args),
        baseline=("vLLM mamba_chunk_scan_combined_varlen", vllm_ssd) if vllm else None,
        target=(1.1, ">=1.1x vLLM"), breakdown=True,
    ))
    for block_l in (CHUNK // 8, CHUNK // 4, CHUNK // 2):
        rows.append(Row(f"sweep ssd block_l={block_l}", f"T={tokens}",
                        lambda i, bl=block_l: lambda: triton_mamba.ssd_chunk_scan_varlen(**ssd_args, chunks=chunks, block_l=bl),
                        bytes=ssd_bytes))
    # causal conv1d and gated RMSNorm: against the reference and the roofline only
    weight, bias = _bf16(CONV_CHANNELS, 4, scale=0.5), _bf16(CONV_CHANNELS, scale=0.1)
    conv_pool = _bf16(8 * max(DECODE_TOKENS) + 1, CONV_CHANNELS, 3)
    xs = _bf16(tokens, CONV_CHANNELS)
    conv_args = dict(x=xs, weight=weight, bias=bias, conv_states=conv_pool, query_start_loc=qsl,
                     state_indices=idx, has_initial_state=init)
    rows.append(Row("causal conv1d prefill", f"T={tokens} C={CONV_CHANNELS}",
                    lambda i: lambda: triton_mamba.causal_conv1d_varlen(**conv_args),
                    bytes=tokens * CONV_CHANNELS * 2 * 2,
                    reference=lambda i: lambda: torch_ops.causal_conv1d_varlen(**conv_args)))
    for batch in DECODE_TOKENS:
        xb = _bf16(batch, 1, CONV_CHANNELS)
        update = lambda i, xb=xb, b=batch: dict(  # noqa: E731
            x=xb, weight=weight, bias=bias, conv_states=conv_pool,
            state_indices=torch.arange(b, device=DEVICE) + 1 + i * b)
        rows.append(Row("causal conv1d update", f"B={batch}",
                        lambda i, u=update: lambda: triton_mamba.causal_conv1d_update(**u(i)),
                        bytes=batch * CONV_CHANNELS * 2 * (1 + 1 + 3 * 2),
                        reference=lambda i, u=update: lambda: torch_ops.causal_conv1d_update(**u(i))))
    norm_w = _bf16(HEADS * HEAD_DIM)
    for tokens in (DECODE_TOKENS[0], DECODE_TOKENS[-1], PREFILL_TOKENS):
        y, z = _bf16(tokens, HEADS * HEAD_DIM), _bf16(tokens, HEADS * HEAD_DIM)
        group = HEADS * HEAD_DIM // GROUPS
        rows.append(Row("gated rmsnorm", f"T={tokens}",
                        lambda i, a=(y, z): lambda: triton_mamba.gated_rms_norm(*a, norm_w, group, 1e-5),
                        bytes=3 * y.numel() * 2,
                        reference=lambda i, a=(y, z): lambda: torch_ops.gated_rms_norm(*a, norm_w, group, 1e-5)))
    return rows


# ---------------------------------------------------------------- table


TIMING = {"": "graph", "*": "eager", "~": "wall"}  # time_us's marks


def _timed(make_call, nbytes: float, what: str, errors: list[str]) -> tuple[float | None, str]:
    """time_us, or (None, "") with the failure noted: one broken call must not end the table."""
    try:
        return time_us(make_call, nbytes)
    except Exception as exc:
        errors.append(f"{what} failed: {exc!r}"[:200])
        return None, ""


def _interpreter_limits(errors: list[str]) -> list[str]:
    """--dry-run: a peer's kernel that Triton's interpreter cannot run (it got as far as its launch,
    so its Python API matched) is a limit of the dry run, noted, not a failure."""
    return [e for e in errors if DEVICE == "cpu" and "InterpreterError" in e]


def gpu_kernel_times(call: Callable[[], object], iters: int = 3) -> list[tuple[str, float]]:
    """[(GPU kernel, microseconds per call)] of `call` after one warm-up call, longest first, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            call()
        torch.cuda.synchronize()
    times = [(e.key, e.device_time_total / iters) for e in prof.key_averages() if e.device_time_total > 0]
    return sorted(times, key=lambda kv: -kv[1])


def measure(row: Row, copy_gbs: float, peak_tflops: float) -> dict:
    """One row's times, its ratio to the baseline and its share of the roofline, as plain data."""
    errors: list[str] = []
    ours, ours_mark = _timed(row.ours, row.bytes, "ours", errors)
    ref, ref_mark = _timed(row.reference, row.bytes, "reference", errors) if row.reference else (None, "")
    base_errors: list[str] = []
    base = _timed(row.baseline[1], row.bytes, row.baseline[0], base_errors)[0] if row.baseline else None
    notes = _interpreter_limits(base_errors)
    errors += [e for e in base_errors if e not in notes]
    breakdown = {}
    if row.breakdown and DEVICE == "cuda":
        for name, call in [("ours", row.ours)] + ([row.baseline] if row.baseline else []):
            try:
                breakdown[name] = gpu_kernel_times(call(0))[:8]
            except Exception as exc:  # the profiler is a diagnosis: its failure must not end the table
                errors.append(f"breakdown of {name} failed: {exc!r}"[:200])
    gbs = row.bytes / ours / 1e3 if ours else None
    speedup = base / ours if base and ours else None
    met = None  # not judged on CPU: a dry run's times mean nothing
    if row.target and ours and DEVICE == "cuda":
        goal = row.target[0]
        met = (gbs / copy_gbs >= -goal) if goal < 0 else (speedup is not None and speedup >= goal)
    return dict(
        kernel=row.kernel, shape=row.shape, ours_us=ours, timing=TIMING[ours_mark],
        reference_us=ref, reference_timing=TIMING[ref_mark],
        baseline=row.baseline[0] if row.baseline else None, baseline_us=base, vs_baseline=speedup,
        bytes=row.bytes, gb_s=gbs, copy_share=gbs / copy_gbs if gbs else None,
        flops=row.flops, tflop_s=row.flops / ours / 1e6 if ours else None,
        peak_share=row.flops / ours / 1e6 / peak_tflops if ours else None,
        target=row.target[1] if row.target else None, target_met=met, errors=errors, notes=notes,
        breakdown=breakdown,
    )


def _fmt(value, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"


def run(rows: list[Row], copy_gbs: float, peak_tflops: float,
        record: Callable[[list[dict]], None] = lambda results: None) -> list[dict]:
    """Print the table row by row; `record` gets the results so far after each row (a run stopped
    by a timeout keeps what it measured)."""
    header = (f"{'kernel':36} {'shape':22} {'ours us':>9} {'ref us':>9} {'base us':>9} {'vs base':>8} "
              f"{'GB/s':>7} {'%copy':>6} {'TFLOP/s':>8} {'%peak':>6}  target")
    print(header)
    print("-" * len(header), flush=True)
    results = []
    for row in rows:
        r = measure(row, copy_gbs, peak_tflops)
        results.append(r)
        record(results)
        met = {True: "met", False: "NOT met", None: "not judged"}[r["target_met"]]
        verdict = f"{r['target']}: {met}" if r["target"] else ""
        ref_mark = {"eager": "*", "wall": "~"}.get(r["reference_timing"], " ")
        pct = lambda share: None if share is None else 100 * share  # noqa: E731
        print(f"{row.kernel:36} {row.shape:22} {_fmt(r['ours_us'], '.1f', 9)} {_fmt(r['reference_us'], '.1f', 9)}"
              f"{ref_mark}{_fmt(r['baseline_us'], '.1f', 9)} {_fmt(r['vs_baseline'], '.2f', 7)}x "
              f"{_fmt(r['gb_s'], '.0f', 7)} {_fmt(pct(r['copy_share']), '.0f', 5)}% {_fmt(r['tflop_s'], '.1f', 8)} "
              f"{_fmt(pct(r['peak_share']), '.0f', 5)}%  {verdict}{''.join(f' [{e}]' for e in r['errors'] + r['notes'])}", flush=True)
        for name, kernels in r["breakdown"].items():
            print(f"    {name}: " + ", ".join(f"{k[:48]} {us:.0f} us" for k, us in kernels), flush=True)
    print("\n* reference syncs with the host: timed eagerly, not as a graph replay; ~ one wall-clock call (--dry-run)."
          "\n  base = torch._grouped_mm on pre-sorted tokens (no routing) for the MoE rows, vLLM's Triton kernels for Mamba.")
    return results


def use_tiny_widths() -> None:
    """--dry-run: every row at TINY widths on the CPU, the Triton kernels under the interpreter.

    Must run before the kernel modules are imported: Triton reads TRITON_INTERPRET at @jit time.
    """
    global DEVICE, CONV_CHANNELS
    os.environ["TRITON_INTERPRET"] = "1"
    globals().update(TINY)
    DEVICE = "cpu"
    CONV_CHANNELS = HEADS * HEAD_DIM + 2 * GROUPS * STATE


def main() -> None:
    parser = argparse.ArgumentParser(description="nemodeploy kernel benchmark (Ultra widths)")
    parser.add_argument("--setup", action="store_true", help="vendor vLLM's Triton Mamba files, then exit")
    parser.add_argument("--vllm-version", default=VLLM_VERSION)
    parser.add_argument("--only", default="", help="run rows whose kernel name contains this")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: every row at tiny widths on CPU under Triton's interpreter (code paths, not speed)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows and the measured peaks here")
    args = parser.parse_args()
    if args.setup:
        setup_vendor(args.vllm_version)
        return
    if args.dry_run:
        use_tiny_widths()
    elif not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (run --setup here, the table on the GPU machine; --dry-run checks the code on CPU)")
    sys.path.insert(0, str(ROOT.parent))
    torch.manual_seed(0)
    vllm, vllm_note = load_vllm()
    copy_gbs, peak_tflops = measure_peaks()
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run: tiny widths, Triton interpreter)"
    print(f"{device_name}: copy {copy_gbs:.0f} GB/s, bf16 matmul {peak_tflops:.0f} TFLOP/s; "
          f"vLLM baseline: {vllm_note}; torch {torch.__version__}\n", flush=True)
    rows = []
    if "moe" in args.only or "sweep" in args.only or not args.only:
        experts = Experts()
        rows += moe_rows(experts) + moe_sweep_rows(experts)
    rows += mamba_rows(vllm) + attention_rows()
    header = dict(device=device_name, dry_run=args.dry_run, torch=torch.__version__, vllm=vllm_note,
                  copy_gb_s=copy_gbs, bf16_tflop_s=peak_tflops)

    def record(results: list[dict]) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(dict(header, rows=results), indent=1))

    results = run([r for r in rows if args.only in r.kernel], copy_gbs, peak_tflops, record)
    failed = sum(bool(r["errors"]) for r in results)
    if failed:
        sys.exit(f"{failed} of {len(results)} rows had a failing call (see the bracketed notes above)")


if __name__ == "__main__":
    main()
