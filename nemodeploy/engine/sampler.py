"""Token choice from logits: penalties and masks, greedy, temperature, top-k, top-p,
per-request seeds, log-probabilities, and the acceptance rule for speculative drafts.

Each request samples with its own torch.Generator, so a seeded request draws the
same random numbers whatever else shares its batch.
"""

from __future__ import annotations

import torch

from nemodeploy.engine.protocol import SamplingParams, TokenLogprob


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def apply_penalties(logits: torch.Tensor, params: SamplingParams, history: list[int], prompt_len: int) -> torch.Tensor:
    """OpenAI's presence / frequency penalties on output tokens, and the repetition penalty
    (CTRL, as vLLM and transformers apply it) on prompt and output tokens; `logits` [n, V]."""
    logits = logits.float().clone()
    vocab = logits.shape[-1]
    if params.repetition_penalty != 1.0 and history:
        seen = torch.unique(torch.tensor(history, device=logits.device).clamp_(0, vocab - 1))
        picked = logits[:, seen]
        logits[:, seen] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    output = history[prompt_len:]
    if (params.presence_penalty or params.frequency_penalty) and output:
        counts = torch.bincount(torch.tensor(output, device=logits.device).clamp_(0, vocab - 1), minlength=vocab)
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    return logits


def apply_masks(logits: torch.Tensor, banned: list[int], allowed_bitmask: list[int] | None) -> torch.Tensor:
    """-inf for `banned` token ids and, with a grammar's bitmask (bit t of word t // 32), every token it forbids."""
    if allowed_bitmask is not None:
        words = torch.tensor(allowed_bitmask, dtype=torch.int64, device=logits.device)
        bits = (words[:, None] >> torch.arange(32, device=logits.device)) & 1
        allowed = bits.flatten().bool()
        vocab = logits.shape[-1]
        keep = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
        keep[: min(vocab, allowed.numel())] = allowed[:vocab]
        logits = logits.masked_fill(~keep, float("-inf"))
    if banned:
        logits = logits.clone()
        logits[..., [t for t in banned if t < logits.shape[-1]]] = float("-inf")
    return logits


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """Log-probabilities of the model's own distribution (before penalties, masks and temperature,
    as vLLM reports by default) for the token chosen at each row, and the `top` most likely."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logprobs, top, dim=-1) if top else None
    out = []
    for row, token in enumerate(tokens):
        pairs = list(zip(best.indices[row].tolist(), best.values[row].tolist())) if best is not None else []
        out.append(TokenLogprob(token, float(logprobs[row, token]), pairs))
    return out


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Softmax of `logits` [n, V] after temperature, top-k and top-p (temperature > 0)."""
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the token crossing it included)
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of `probs`, by the exponential race (argmax p / E, E ~ Exp(1))."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return torch.argmax(probs / noise, dim=-1)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from one row of logits [V]."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    return int(draw(probabilities(logits[None], params), generator)[0])


def verify(
    logits: torch.Tensor, drafts: list[int], params: SamplingParams, generator: torch.Generator
) -> list[int]:
    """Accept a prefix of `drafts` and add one token of the target's own: 1..len(drafts)+1 tokens.

    `logits` [len(drafts)+1, V] are the target model's at the last accepted token and
    at each draft. The MTP drafts are argmax picks (a one-hot draft distribution), so:
    greedy accepts while draft == argmax; with temperature, draft d is accepted with
    probability p(d) and on rejection the replacement is drawn from p with d removed,
    which is exactly speculative sampling's (p - q)+ for one-hot q: the output
    distribution is the target's.
    """
    out: list[int] = []
    if params.temperature == 0:
        target = torch.argmax(logits, dim=-1).tolist()
        for i, d in enumerate(drafts):
            out.append(target[i])
            if d != target[i]:
                return out
        out.append(target[len(drafts)])
        return out
    probs = probabilities(logits, params)
    coins = torch.rand(len(drafts), generator=generator, device=logits.device).tolist() if drafts else []
    for i, d in enumerate(drafts):
        p = probs[i]
        if coins[i] < float(p[d]):
            out.append(d)
            continue
        residual = p.clone()
        residual[d] = 0.0
        if float(residual.sum()) <= 0:  # p was one-hot on d: cannot reject
            out.append(d)
            continue
        out.append(int(draw((residual / residual.sum())[None], generator)[0]))
        return out
    out.append(int(draw(probs[len(drafts)][None], generator)[0]))
    return out
