"""Pipeline parallel: which layers each stage holds, and the micro-batches a step is cut into.

The executor (ray_executor.py) sends each micro-batch through the stages in turn, the
hidden states of one stage becoming the input of the next, and puts all micro-batches of
a step in flight at once: while stage 1 runs micro-batch 0, stage 0 runs micro-batch 1.
The sequences of different micro-batches share nothing (each has its own KV pages and
Mamba slot), so cutting a step into micro-batches changes no sequence's tokens.
"""

from __future__ import annotations

from nemodeploy.engine.model.parallel import PipelineStage
from nemodeploy.engine.scheduler import SchedulerOutput


def pipeline_stages(num_layers: int, pp_size: int, bounds: list[tuple[int, int]] | None = None) -> list[PipelineStage]:
    """The stages of `pp_size`: `bounds` ([start, end) per stage, e.g. the plan's split) checked to
    cover the layers in order, else a contiguous even split with the first stages taking the remainder."""
    if pp_size < 1 or pp_size > num_layers:
        raise ValueError(f"pp_size {pp_size} must be between 1 and the model's {num_layers} layers")
    if bounds is None:
        base, extra = divmod(num_layers, pp_size)
        ends = [(i + 1) * base + min(i + 1, extra) for i in range(pp_size)]
        bounds = list(zip([0, *ends[:-1]], ends))
    bounds = [tuple(b) for b in bounds]
    if len(bounds) != pp_size or bounds[0][0] != 0 or bounds[-1][1] != num_layers or any(
            a[1] != b[0] for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"stage layers {bounds} do not split the model's {num_layers} layers into {pp_size} "
                         "contiguous stages")
    return [PipelineStage(start, end, num_layers) for start, end in bounds]


def micro_batches(step: SchedulerOutput, count: int) -> list[SchedulerOutput]:
    """`step` cut into at most `count` micro-batches of whole sequences with about as many tokens
    each (a long prefill chunk may make one alone); the first carries the released requests."""
    total = sum(len(c.token_ids) for c in step.chunks)
    parts: list[SchedulerOutput] = [SchedulerOutput(released=list(step.released))]
    done = 0
    for chunk in step.chunks:
        # start the next part once this one holds its share of the tokens
        if parts[-1].chunks and len(parts) < count and done >= total * len(parts) / count:
            parts.append(SchedulerOutput())
        parts[-1].chunks.append(chunk)
        done += len(chunk.token_ids)
    return parts
