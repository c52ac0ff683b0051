"""Scheduler and cache bookkeeping, without a model: admission needs a Mamba slot and the
prompt's KV blocks, the queue is bounded, and finishing or preemption returns everything."""

from __future__ import annotations

import pytest

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.protocol import GenerationRequest, QueueFull, RequestTooLong, SamplingParams
from nemodeploy.engine.scheduler import Scheduler, Sequence, Status


def _seq(rid: str, prompt_len: int, max_tokens: int = 8) -> Sequence:
    return Sequence(GenerationRequest(rid, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens)), 0)


def _scheduler(**overrides) -> Scheduler:
    values = dict(model="unused", block_size=4, num_kv_blocks=8, num_mamba_slots=2, max_num_seqs=2,
                  max_num_batched_tokens=16, max_queue=1, max_model_len=64)
    return Scheduler(EngineConfig(**(values | overrides)))


def _decode(s: Scheduler, steps: int) -> None:
    """Pretend the model produced one token per sampled chunk."""
    for _ in range(steps):
        for chunk in s.schedule().chunks:
            seq = next(q for q in s.running if q.request_id == chunk.request_id)
            s.advance(seq, chunk, [7] if chunk.sample else [], [])


def test_admission_waits_for_a_mamba_slot():
    s = _scheduler()
    for rid in "abc":
        s.add(_seq(rid, 4))
    out = s.schedule()
    assert [c.request_id for c in out.chunks] == ["a", "b"]
    assert [seq.request_id for seq in s.waiting] == ["c"] and s.slots.num_free == 0


def test_prefill_is_chunked_under_the_token_budget():
    s = _scheduler(max_num_batched_tokens=6, num_kv_blocks=16)
    s.add(_seq("a", 13))
    sizes = []
    for _ in range(3):
        chunk = s.schedule().chunks[0]
        sizes.append((len(chunk.token_ids), chunk.sample))
        s.advance(s.running[0], chunk, [7] if chunk.sample else [], [])
    assert sizes == [(6, False), (6, False), (1, True)]


def test_queue_bound_counts_only_requests_that_must_wait():
    s = _scheduler()
    for rid in "abc":  # two free places plus one waiting place
        s.add(_seq(rid, 4))
    with pytest.raises(QueueFull):
        s.add(_seq("d", 4))


def test_too_long_requests_are_refused_up_front():
    s = _scheduler()
    with pytest.raises(RequestTooLong):
        s.check(GenerationRequest("x", list(range(60)), SamplingParams(max_tokens=10)))


def test_finishing_returns_blocks_and_slot_and_lets_the_next_one_in():
    s = _scheduler()
    seqs = [_seq(rid, 4) for rid in "abc"]
    for q in seqs:
        s.add(q)
    _decode(s, 3)
    s.finish(seqs[0])
    assert seqs[0].status is Status.FINISHED and seqs[0].block_table == []
    _decode(s, 1)
    assert seqs[2].status is Status.RUNNING
    for q in seqs[1:]:
        s.finish(q)
    assert s.blocks.num_free == 8 and s.slots.num_free == 2


def test_out_of_blocks_preempts_the_newest_and_recomputes_it_later():
    s = _scheduler(num_kv_blocks=4)  # 16 tokens of KV for two sequences
    a, b = _seq("a", 6, max_tokens=20), _seq("b", 6, max_tokens=20)
    s.add(a)
    s.add(b)
    _decode(s, 6)  # both grow past 8 tokens: b gives its blocks to a
    assert a.status is Status.RUNNING and b.status is Status.WAITING
    assert b.num_computed == 0 and b.slot is None and len(b.token_ids) > 6
    assert s.blocks.num_free + len(a.block_table) == 4
