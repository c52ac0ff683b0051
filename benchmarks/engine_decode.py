"""Engine decode benchmark: an Ultra-width slice of Nemotron 3 on one GPU, beside the planner's prediction.

The slice is Ultra's config (hidden 8192, 512 experts top-22 in a 2048 latent, 256 Mamba heads,
64 query / 2 KV heads, 131072 vocab) with a short layer pattern (default ``MEM*E``: two Mamba,
two LatentMoE and one attention layer, about 50 GB in bf16) and no MTP. Its weights are drawn on
the device (no checkpoint: one MoE layer alone is 21 GB): unit-scale activations and a router
without bias, so tokens spread over the experts; the distinct experts each step touches are
counted and shown beside what the planner assumes.

Per batch size: every sequence prefills ``--context`` tokens, then ``--steps`` decode steps are
timed, each what ``ModelRunner.execute`` does for a decode batch minus the scheduler: build the
batch metadata, forward, logits, greedy pick (wall clock, host work included). tokens/s =
batch x steps / time. The prediction is the plan library's: ``compile_plan`` on a one-GPU
topology serving this slice (``model.path`` = the slice's config.json, concurrency = batch,
max_context = context + steps), its decode step (``plan.estimate.decode_step_ms``, no other
request's prefill in between, as here) turned into batch / step tokens/s. The issue's target:
measured >= 70% of the prediction. On the GPU each batch also reports the GPU's kernel time per
step (torch.profiler) and its longest kernels.

    python benchmarks/engine_decode.py --json out.json       # on the GPU
    python benchmarks/engine_decode.py --dry-run             # here: the tiny spec's widths on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nemodeploy.engine.batch import BatchMetadata  # noqa: E402
from nemodeploy.engine.cache import HybridCache  # noqa: E402
from nemodeploy.engine.kernels import get_kernels  # noqa: E402
from nemodeploy.engine.model.nemotron_h import NemotronHForCausalLM  # noqa: E402
from nemodeploy.models.config import NemotronHConfig  # noqa: E402
from nemodeploy.models.specs import SPECS  # noqa: E402
from nemodeploy.plan.compiler import compile_plan  # noqa: E402
from nemodeploy.plan.estimate import expected_experts_touched  # noqa: E402
from nemodeploy.topology.schema import Topology  # noqa: E402

TARGET = 0.70  # measured decode tokens/s over the planner's prediction
BLOCK_SIZE = 16
PREFILL_TOKENS = 8192  # tokens per prefill forward (whole sequences, as many as fit)
PRECISION = {torch.bfloat16: "bf16", torch.float32: "fp32"}


def slice_config(spec: str, pattern: str, directory: Path) -> NemotronHConfig:
    """The built-in spec `spec` cut to the layers of `pattern`, without MTP, written as config.json."""
    values = json.loads(SPECS[spec].file.read_text())
    values.update(hybrid_override_pattern=pattern, num_hidden_layers=len(pattern), num_nextn_predict_layers=0)
    values.pop("mtp_hybrid_override_pattern", None)
    (directory / "config.json").write_text(json.dumps(values, indent=1))
    return NemotronHConfig.from_file(directory)


@torch.no_grad()
def randomize_on_device(model: torch.nn.Module, seed: int) -> None:
    """Unit-scale activations (weights ~ N(0, 1/fan_in), norms ~ 1), stable Mamba decay, an
    unbiased router. Drawn in place on the model's device: no host copy of 50 GB."""
    gen = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("A_log"):
            p.uniform_(0.0, math.log(8.0), generator=gen)
        elif name.endswith("dt_bias"):
            p.uniform_(-2.0, 0.0, generator=gen)
        elif name.endswith("e_score_correction_bias"):
            p.zero_()
        elif "norm" in name:
            p.normal_(1.0, 0.1, generator=gen)
        elif p.dim() == 1 or "embeddings" in name:  # D, conv bias, token embeddings
            p.normal_(0.0, 1.0, generator=gen)
        else:  # projections, experts, conv taps: fan-in scaled
            p.normal_(0.0, p.shape[-1] ** -0.5, generator=gen)


def prediction(config_dir: Path, accelerator: str, precision: str, batch: int, context: int) -> dict:
    """The planner's estimate for this slice serving `batch` sequences of `context` tokens on one device."""
    topology = Topology.model_validate(dict(
        name="engine-decode-slice",
        nodes=[dict(name="gpu0", address="127.0.0.1", accelerators=dict(kind=accelerator, count=1))],
        model=dict(path=str(config_dir), precision=precision),
        engine=dict(kind="embedded", memory_utilization=0.9),
        serving=dict(max_context=context, concurrency=batch, max_batched_tokens=PREFILL_TOKENS, speculative_tokens=0),
    ))
    plan = compile_plan(topology, with_alternatives=False)
    if plan.estimate is None:
        raise SystemExit(f"the planner does not serve the slice on one {accelerator}: {plan.reason}")
    estimate = plan.estimate
    return dict(
        plan_batch=estimate.batch_per_replica,
        # decode alone, as timed here: the plan's per-replica rate also counts other requests' prefill chunks
        predicted_tokens_per_s=estimate.batch_per_replica * estimate.spec_tokens_per_step / estimate.decode_step_ms * 1e3,
        predicted_step_ms=estimate.decode_step_ms,
        predicted_bound=estimate.decode_bound,
        predicted_bytes_per_step=estimate.bytes_per_decode_step_per_rank,
        plan_weight_bytes=plan.memory.weights,
    )


class DecodeBench:
    """The slice's model and a cache for `max_batch` sequences of `max_len` tokens, on one device."""

    def __init__(self, config: NemotronHConfig, dtype: torch.dtype, device: str, max_batch: int, max_len: int) -> None:
        self.device, self.touched = device, []
        ops = get_kernels(device)
        route = ops.moe_route

        def counting_route(*args, **kwargs):  # the experts a step touches, counted outside the timed steps
            weights, ids = route(*args, **kwargs)
            if self.counting:
                self.touched.append(ids.unique().numel())
            return weights, ids

        self.counting = False
        ops = dataclasses.replace(ops, moe_route=counting_route)
        with torch.device(device):
            self.model = NemotronHForCausalLM(config, dtype=dtype, ops=ops, with_mtp=False).eval()
        randomize_on_device(self.model, seed=0)
        self.blocks_per_seq = -(-max_len // BLOCK_SIZE)
        self.cache = HybridCache(config, max_batch * self.blocks_per_seq, BLOCK_SIZE, max_batch, dtype, device)
        self.vocab = config.vocab_size

    def _tables(self, seqs: range) -> list[list[int]]:
        return [list(range(s * self.blocks_per_seq, (s + 1) * self.blocks_per_seq)) for s in seqs]

    @torch.inference_mode()
    def step(self, seqs: range, tokens: torch.Tensor, context: list[int], num_decodes: int) -> torch.Tensor:
        """One forward of `tokens` (laid end to end, per sequence of `seqs`); each sequence's greedy next token."""
        lens = [len(tokens) // len(seqs)] * len(seqs)
        batch = BatchMetadata.build(query_lens=lens, context_lens=context, block_tables=self._tables(seqs),
                                    mamba_slots=list(seqs), block_size=BLOCK_SIZE, device=self.device,
                                    num_decodes=num_decodes)
        hidden = self.model(tokens, batch, self.cache)
        return self.model.compute_logits(hidden[batch.logits_indices]).argmax(-1)

    def prefill(self, batch: int, context: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(batch)
        last = []
        per_forward = max(PREFILL_TOKENS // context, 1)
        for first in range(0, batch, per_forward):
            seqs = range(first, min(first + per_forward, batch))
            prompt = torch.randint(3, self.vocab, (len(seqs) * context,), generator=gen).to(self.device)
            last.append(self.step(seqs, prompt, [0] * len(seqs), 0))
        return torch.cat(last)

    def decode(self, batch: int, context: int, steps: int, warmup: int) -> dict:
        tokens = self.prefill(batch, context)
        seqs, at = range(batch), context
        self.counting = True
        tokens = self.step(seqs, tokens, [at] * batch, batch)  # warm-up 1, counting experts
        self.counting = False
        at += 1
        for _ in range(warmup - 1):
            tokens = self.step(seqs, tokens, [at] * batch, batch)
            at += 1
        self._sync()
        start = time.perf_counter()
        for _ in range(steps):
            tokens = self.step(seqs, tokens, [at] * batch, batch)
            at += 1
        self._sync()
        seconds = time.perf_counter() - start
        touched, self.touched = self.touched, []
        busy = self._gpu_time(lambda: self.step(seqs, tokens, [at] * batch, batch)) if self.device == "cuda" else {}
        return dict(tokens_per_s=batch * steps / seconds, step_ms=seconds / steps * 1e3,
                    experts_touched_measured=sum(touched) / len(touched) if touched else 0.0, **busy)

    def _gpu_time(self, step) -> dict:
        """GPU kernel time of one step and its longest kernels: a step much longer than its kernels
        is held up by the host."""
        from benchmarks.kernels import gpu_kernel_times

        kernels = [(name, us / 1e3) for name, us in gpu_kernel_times(step, iters=2)]
        return dict(gpu_ms_per_step=sum(ms for _, ms in kernels), top_kernels=kernels[:6])

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description="engine decode on one GPU: an Ultra-width slice vs the planner")
    parser.add_argument("--pattern", default="MEM*E", help="layer pattern of the slice (M Mamba, E MoE, * attention, - MLP)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--context", type=int, default=1024, help="prompt tokens per sequence before decoding")
    parser.add_argument("--steps", type=int, default=16, help="timed decode steps per batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed decode steps first (at least 1)")
    parser.add_argument("--accelerator", default="h200", help="catalog kind the planner predicts for")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: the tiny spec's widths on CPU (code paths, not speed)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args()
    if args.dry_run:
        spec, device, accelerator = "nemotron-h-tiny", "cpu", "cpu"
        args.batches, args.context, args.steps = [1, 4], 16, 2
    elif not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (--dry-run checks the code on CPU)")
    else:
        spec, device, accelerator = "nemotron-3-ultra", "cuda", args.accelerator
    args.warmup = max(args.warmup, 1)
    dtype = torch.bfloat16
    max_len = args.context + args.warmup + args.steps
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        config = slice_config(spec, args.pattern, Path(tmp))
        predictions = {b: prediction(Path(tmp), accelerator, PRECISION[dtype], b, max_len) for b in args.batches}
    bench = DecodeBench(config, dtype, device, max(args.batches), max_len)
    weight_bytes = sum(p.numel() * p.element_size() for p in bench.model.parameters())
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run: tiny widths)"
    print(f"{device_name}: slice {args.pattern} of {spec} ({weight_bytes / 1e9:.1f} GB {PRECISION[dtype]}), "
          f"context {args.context}, {args.steps} timed steps; torch {torch.__version__}", flush=True)
    print(f"{'batch':>5} {'tok/s':>9} {'step ms':>8} {'planner tok/s':>13} {'step ms':>8} {'ratio':>6} "
          f"{'experts/step':>12} {'planner':>7}  target >= {TARGET:.0%} of the prediction")
    rows = []
    result = dict(device=device_name, dry_run=args.dry_run, torch=torch.__version__, spec=spec, pattern=args.pattern,
                  precision=PRECISION[dtype], weight_bytes=weight_bytes, context=args.context, steps=args.steps,
                  accelerator=accelerator, rows=rows)
    for b in args.batches:
        measured = bench.decode(b, args.context, args.steps, args.warmup)
        predicted = predictions[b]
        ratio = measured["tokens_per_s"] / predicted["predicted_tokens_per_s"]
        met = ratio >= TARGET if device == "cuda" else None
        row = dict(batch=b, **measured, **predicted, ratio=ratio, target=TARGET, target_met=met,
                   experts_touched_planner=expected_experts_touched(config.n_routed_experts, config.num_experts_per_tok, b))
        rows.append(row)
        verdict = {True: "met", False: "NOT met", None: "not judged (dry run)"}[met]
        print(f"{b:5d} {row['tokens_per_s']:9.1f} {row['step_ms']:8.2f} {row['predicted_tokens_per_s']:13.1f} "
              f"{row['predicted_step_ms']:8.2f} {ratio:6.2f} {row['experts_touched_measured']:12.1f} "
              f"{row['experts_touched_planner']:7.1f}  {verdict}"
              + ("" if row["plan_batch"] == b else f" (the planner's batch is {row['plan_batch']})"), flush=True)
        if "gpu_ms_per_step" in row:
            print(f"      GPU busy {row['gpu_ms_per_step']:.2f} ms of the step; longest kernels: "
                  + ", ".join(f"{k[:40]} {ms:.2f}" for k, ms in row["top_kernels"]), flush=True)
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated() if device == "cuda" else None
        if args.json:  # after every batch size: a run stopped by a timeout keeps what it measured
            Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
