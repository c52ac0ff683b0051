"""Grammar-constrained decoding with llguidance: a grammar per request, a next-token mask per step.

A request's `guided` spec becomes an `LLMatcher` over the checkpoint's tokenizer (built once).
Each step the engine core asks the matcher for the allowed next tokens (a bitmask, bit t of
word t // 32) and every rank masks its logits with it; the tokens decided are then fed back
to the matcher. When the grammar is complete only EOS is allowed, so the answer ends there.

Specs: {"json_schema": schema} (`response_format` json_object is the schema {"type": "object"}),
{"lark": grammar} (llguidance's Lark dialect: tool calls in the model's format), {"regex": pattern}.
"""

from __future__ import annotations

import json
from typing import Any


class GrammarError(ValueError):
    """The grammar does not compile: the server answers 400 with the reason."""


class StructuredOutput:
    def __init__(self, hf_tokenizer: Any):
        import llguidance.hf

        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer)

    def matcher(self, guided: dict[str, Any]):
        from llguidance import LLMatcher

        if len(guided) != 1:
            raise GrammarError(f"one grammar per request, got {sorted(guided)}")
        kind, value = next(iter(guided.items()))
        if kind == "json_schema":
            if not isinstance(value, dict) or not isinstance(value.get("x-guidance", {}), dict):
                raise GrammarError("a JSON schema must be an object (and its x-guidance too)")
            # JSON without free white space between tokens: a model cannot pad the answer to its max_tokens
            value = {**value, "x-guidance": {"whitespace_flexible": False, **value.get("x-guidance", {})}}
            grammar = LLMatcher.grammar_from_json_schema(json.dumps(value))
        elif kind == "lark":
            grammar = LLMatcher.grammar_from_lark(value)
        elif kind == "regex":
            grammar = LLMatcher.grammar_from_regex(value)
        else:
            raise GrammarError(f"unknown grammar kind {kind!r}; use json_schema, lark or regex")
        error = LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise GrammarError(f"invalid {kind.replace('_', ' ')}: {error[:300]}")
        matcher = LLMatcher(self.tokenizer, grammar)
        if matcher.is_error():
            raise GrammarError(f"invalid {kind.replace('_', ' ')}: {matcher.get_error()[:300]}")
        return matcher

    def bitmask(self, matcher) -> list[int]:
        import llguidance.torch

        mask = llguidance.torch.allocate_token_bitmask(1, self.tokenizer.vocab_size)
        llguidance.torch.fill_next_token_bitmask(matcher, mask, 0)
        return mask[0].tolist()
