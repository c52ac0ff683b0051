"""Text in and out: chat template, incremental detokenization, stop strings, reasoning split.

The reasoning split is done on token ids, not text: once the chat template opened a
thinking section, every token up to the `</think>` token is reasoning and every
token after it is content. Stop strings apply to the content only (they describe
where the answer ends); the matched stop is cut out and a partial match is held
back, so a streamed delta never shows half of a stop string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# what transformers passes to every chat template itself: never a client's to set
TEMPLATE_RESERVED = frozenset({"messages", "tools", "documents", "add_generation_prompt", "continue_final_message",
                               "chat_template", "tokenize", "return_dict", "raise_exception", "strftime_now"})


class TemplateError(ValueError):
    """The chat template cannot render these messages or options: the request's fault (400)."""


class Tokenizer:
    """The checkpoint's tokenizer and chat template."""

    def __init__(self, model_dir: str | Path):
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(str(model_dir))
        self.eos_token_ids = self._eos_ids(Path(model_dir))
        self.think_close_id = self._single_token_id(THINK_CLOSE)
        self.vocab_size = self._vocab_size(Path(model_dir))
        self.template_options = self._template_options()

    def _vocab_size(self, model_dir: Path) -> int:
        """Rows of the model's embedding (config.json), which may exceed the tokenizer's own vocabulary."""
        import json

        config = model_dir / "config.json"
        size = json.loads(config.read_text()).get("vocab_size") if config.exists() else None
        return size if isinstance(size, int) and size > 0 else len(self.hf)

    def _template_options(self) -> frozenset[str]:
        """The variables the checkpoint's chat template reads that a request may set through
        chat_template_kwargs (enable_thinking, ...): everything but what transformers passes itself."""
        template = self.hf.chat_template
        if not isinstance(template, str):
            return frozenset()
        import jinja2
        import jinja2.meta

        env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
        try:
            names = jinja2.meta.find_undeclared_variables(env.parse(template))
        except jinja2.TemplateError:
            return frozenset()
        special = {name for name in self.hf.special_tokens_map}
        return frozenset(names - TEMPLATE_RESERVED - special)

    def _single_token_id(self, text: str) -> int | None:
        ids = self.hf.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    def _eos_ids(self, model_dir: Path) -> set[int]:
        """EOS ids from the tokenizer and generation_config.json (chat models often list several)."""
        import json

        ids = {self.hf.eos_token_id} if self.hf.eos_token_id is not None else set()
        gen = model_dir / "generation_config.json"
        if gen.exists():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return ids

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=True)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def apply_chat_template(
        self, messages: list[dict[str, Any]], enable_thinking: bool | None, extra: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> tuple[list[int], bool]:
        """Render the conversation with the generation prompt.

        Returns the prompt ids and whether the prompt leaves a thinking section open
        (the last `<think>` comes after the last `</think>`), which is what the
        engine needs to count reasoning tokens and split them out.
        """
        import jinja2

        if self.hf.chat_template is None:
            raise TemplateError("this model has no chat template; use /v1/completions")
        kwargs = dict(extra or {})
        unknown = sorted(set(kwargs) - self.template_options)
        if unknown:
            options = ", ".join(sorted(self.template_options)) or "none"
            raise TemplateError(f"chat_template_kwargs: {', '.join(map(repr, unknown))} is not an option of this "
                                f"model's chat template (options: {options})")
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        try:
            text = self.hf.apply_chat_template(messages, tools=tools or None, tokenize=False, add_generation_prompt=True,
                                               **kwargs)
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise TemplateError(f"the chat template cannot render these messages: {exc}") from None
        thinking = text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE)
        ids = self.hf.encode(text, add_special_tokens=False)
        return ids, thinking


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without re-decoding everything.

    Decodes a short window of the already-emitted tokens together with the new ones
    (so word-boundary spaces come out right) and holds back text that ends in an
    incomplete UTF-8 sequence (U+FFFD) until the next token completes it.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset :])
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        return full[len(prefix) :]

    def flush(self) -> str:
        """At the end: whatever is held back (an incomplete UTF-8 sequence decodes as U+FFFD)."""
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""


class StopMatcher:
    """Cuts streamed text before the first stop string to complete; holds back a possible partial match."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Append `delta`; return the text now safe to emit (never past a stop string)."""
        self.text += delta
        if not self.stops:
            out, self.emitted = self.text[self.emitted :], len(self.text)
            return out
        longest = max(len(s) for s in self.stops)
        search_from = max(0, self.emitted - longest + 1)
        # the stop that completes first wins (so token boundaries cannot change the answer)
        hits = [(i + len(s), i) for s in self.stops if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            end = min(hits)[1]
            self.stopped = True
        else:
            end = len(self.text) - self._partial_stop_suffix()
        out = self.text[self.emitted : max(end, self.emitted)]
        self.emitted = max(end, self.emitted)
        return out

    def flush(self) -> str:
        """At the end (EOS, length): a held-back partial match was not a stop after all."""
        if self.stopped:
            return ""
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out

    def _partial_stop_suffix(self) -> int:
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:n]):
                    best = n
                    break
        return best


@dataclass
class OutputText:
    """Per-request output side: reasoning and content detokenized separately."""

    tokenizer: Tokenizer
    stops: list[str]
    thinking: bool  # currently inside the thinking section
    reasoning: IncrementalDetokenizer = field(init=False)
    content: IncrementalDetokenizer = field(init=False)
    matcher: StopMatcher = field(init=False)

    def __post_init__(self) -> None:
        self.reasoning = IncrementalDetokenizer(self.tokenizer)
        self.content = IncrementalDetokenizer(self.tokenizer)
        self.matcher = StopMatcher(self.stops)

    def add(self, token_id: int) -> tuple[str, str]:
        """Return (reasoning delta, content delta) for one new token."""
        if self.thinking:
            if token_id == self.tokenizer.think_close_id:
                self.thinking = False
                return "", ""
            return self.reasoning.add(token_id), ""
        return "", self.matcher.feed(self.content.add(token_id))

    @property
    def stopped(self) -> bool:
        return self.matcher.stopped

    def finish(self) -> tuple[str, str]:
        """(reasoning, content) held back until the end; nothing after a matched stop string."""
        if self.matcher.stopped:
            return "", ""
        return self.reasoning.flush(), self.matcher.feed(self.content.flush()) + self.matcher.flush()
