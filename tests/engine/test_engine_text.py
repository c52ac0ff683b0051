"""Output text: stop strings never leak (not even half of one while streaming), reasoning is
split off at the </think> token, and the thinking budget forces </think> after N tokens."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.core import LLMEngine
from nemodeploy.engine.protocol import GenerationRequest, SamplingParams
from nemodeploy.engine.tiny import tiny_model_dir
from nemodeploy.engine.tokenizer import StopMatcher

alphabet = st.sampled_from("abc")


@given(text=st.text(alphabet, max_size=30), stops=st.lists(st.text(alphabet, min_size=1, max_size=4), max_size=3),
       cuts=st.lists(st.integers(0, 30), max_size=8))
@settings(max_examples=300, deadline=None)
def test_streamed_text_stops_before_the_first_completed_stop_and_never_shows_part_of_it(text, stops, cuts):
    matcher = StopMatcher(stops)
    pieces = [text[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(text)])]
    emitted = ""
    for piece in pieces:
        emitted += matcher.feed(piece)
        assert not any(s in emitted for s in stops)
        if matcher.stopped:
            break
    emitted += matcher.flush()
    # the stop string that completes first cuts the text at its start, however the text was split
    hits = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    assert emitted == (text[: min(hits)[1]] if hits else text)
    assert matcher.stopped == bool(hits)


def _engine() -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(tiny_model_dir()), dtype="float32", block_size=8, num_kv_blocks=32,
                                  num_mamba_slots=2, max_num_seqs=2))


def _generate(engine: LLMEngine, request: GenerationRequest):
    engine.add_request(request)
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    return outs


def test_thinking_budget_forces_think_close_after_n_reasoning_tokens():
    engine = _engine()
    tok = engine.tokenizer
    prompt, thinking = tok.apply_chat_template([{"role": "user", "content": "Hello"}], enable_thinking=True)
    assert thinking
    outs = _generate(engine, GenerationRequest("r", prompt, SamplingParams(
        max_tokens=12, temperature=0, ignore_eos=True, thinking_budget=4), thinking=True))
    tokens = [t for o in outs for t in o.token_ids]
    assert tokens.index(tok.think_close_id) == 4 and len(tokens) == 12
    assert "".join(o.reasoning_text for o in outs) == tok.decode(tokens[:4])
    assert "".join(o.text for o in outs) == tok.decode(tokens[5:])


def test_thinking_off_sends_everything_to_content():
    engine = _engine()
    prompt, thinking = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], False)
    assert not thinking
    outs = _generate(engine, GenerationRequest("r", prompt, SamplingParams(max_tokens=8, temperature=0,
                                                                           ignore_eos=True)))
    assert "".join(o.reasoning_text for o in outs) == ""
    assert "".join(o.text for o in outs) == engine.tokenizer.decode([t for o in outs for t in o.token_ids])


def test_stop_token_ids_end_the_request():
    engine = _engine()
    prompt = engine.tokenizer.encode("The quick brown fox")
    free = _generate(engine, GenerationRequest("a", prompt, SamplingParams(max_tokens=10, temperature=0,
                                                                           ignore_eos=True)))
    tokens = [t for o in free for t in o.token_ids]
    stopped = _generate(engine, GenerationRequest("b", prompt, SamplingParams(
        max_tokens=10, temperature=0, ignore_eos=True, stop_token_ids=[tokens[3]])))
    assert [t for o in stopped for t in o.token_ids] == tokens[: tokens.index(tokens[3]) + 1]
    assert stopped[-1].finish_reason == "stop"
