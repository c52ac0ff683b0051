"""Parameters, weight bytes, cache bytes and FLOPs of a model, counted from its config.

Everything is counted tensor by tensor from the shapes the checkpoint holds (the
inventory below), so the totals, the per-component split and the bytes at each
precision come from one list and cannot disagree.

Conventions
- *Total* parameters are those of the backbone: embeddings, every layer, the final
  norm and an untied lm_head. The MTP (multi-token prediction) module is counted
  apart (`mtp_params`): it is only loaded for speculative decoding.
- *Active* parameters are those one token's forward pass multiplies: every weight
  except the routed experts it is not sent to (each MoE layer counts top-k of n)
  and except the input embedding, whose lookup reads one row. This is the
  convention of NVIDIA's "A55B" for Nemotron 3 Ultra (55.0 B active); Mistral's
  "12.9 B active" for Mixtral also counts the embedding table.
- The per-layer figures are those of one mixer (the block's pre-norm is in `norms`).

Weight bytes by precision (what each checkpoint stores):
- ``bf16``: 2 bytes per value; ``fp32``: 4 bytes per value.
- ``fp8``: every linear weight (Mamba in/out projections, attention q/k/v/o, routed
  and shared experts, latent projections, dense MLPs) is 1 byte plus one fp32
  scale per output channel. Embeddings, lm_head, norms, the router, the Mamba conv
  and per-head vectors (A_log, D, dt_bias) and biases stay BF16: they are small or
  (embedding, lm_head, router) decide which token / expert is chosen, where FP8
  error changes the output discretely.
- ``nvfp4``: NVIDIA's published mixed-precision split (the Ultra NVFP4 checkpoint, Table 1 of
  "Creating the NVIDIA Nemotron 3 Ultra NVFP4 Checkpoint with NVIDIA Model Optimizer",
  developer.nvidia.com, 2026-06-26): routed experts NVFP4 (E2M1, 4 bits, one FP8 E4M3 scale
  per 16 values along the input dimension = 4.5 bits, one fp32 scale per tensor); shared
  experts and the Mamba mixer's in/out projections FP8 with one fp32 scale per tensor;
  attention, latent projections, router, embeddings, lm_head and the whole MTP module BF16.
  Counted so, Ultra's checkpoint is 351.9 GB against the 352.3 GB the post gives.
- In every precision the MoE router's ``e_score_correction_bias`` is stored fp32
  (the published Nemotron 3 Super BF16 checkpoint keeps it as an F32 buffer).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from nemodeploy.models.config import ATTENTION, MAMBA, MLP, MOE, NemotronHConfig

PRECISIONS = ("bf16", "fp8", "nvfp4", "fp32")

# Component names (ModelAccount fields, keys of WeightBytes.by_component).
EMBEDDING, LM_HEAD, NORMS = "embedding", "lm_head", "norms"
MAMBA_C, ATTENTION_C, MLP_C = "mamba", "attention", "mlp"
ROUTED, SHARED, ROUTER, LATENT = "moe_routed_experts", "moe_shared_experts", "moe_router", "moe_latent_proj"
MTP = "mtp"
COMPONENTS = (EMBEDDING, LM_HEAD, MAMBA_C, ATTENTION_C, ROUTED, SHARED, ROUTER, LATENT, MLP_C, NORMS)
"""The backbone components, in the order ModelAccount lists them."""

# Storage roles: how a tensor is stored at each precision.
_LINEAR, _EXPERT, _KEEP, _FP32 = "linear", "expert", "keep", "fp32"
NVFP4_FP8_COMPONENTS = (SHARED, MAMBA_C)
"""Linear weights the NVFP4 checkpoint stores as FP8 per-tensor (the rest of its non-expert weights are BF16)."""
MTP_PRECISION = {"nvfp4": "bf16"}
"""Checkpoints whose MTP module is stored at another precision than the backbone."""


@dataclass(frozen=True)
class Weights:
    """`copies` tensors of `rows` x `cols` (a vector has rows == 1)."""

    component: str
    role: str
    rows: int
    cols: int
    copies: int = 1

    @property
    def params(self) -> int:
        return self.rows * self.cols * self.copies

    def bytes_at(self, precision: str) -> int:
        if precision == "fp32" or self.role == _FP32:
            return 4 * self.params
        if precision == "fp8" and self.role in (_LINEAR, _EXPERT):
            return self.params + 4 * self.rows * self.copies
        if precision == "nvfp4" and self.role == _EXPERT:
            blocks = self.rows * self.copies * math.ceil(self.cols / 16)
            return (self.params + 1) // 2 + blocks + 4 * self.copies
        if precision == "nvfp4" and self.role == _LINEAR and self.component in NVFP4_FP8_COMPONENTS:
            return self.params + 4 * self.copies
        return 2 * self.params


def _linear(component: str, n_in: int, n_out: int, bias: bool, role: str = _LINEAR) -> list[Weights]:
    out = [Weights(component, role, n_out, n_in)]
    if bias:
        out.append(Weights(component, _KEEP, 1, n_out))
    return out


def _ffn(c: NemotronHConfig, component: str, n_in: int, width: int, copies: int, role: str) -> list[Weights]:
    """An expert or MLP: up (and gate when gated) n_in -> width, down width -> n_in."""
    ups = 2 if c.gated_mlp else 1
    out = [Weights(component, role, width, n_in, ups * copies), Weights(component, role, n_in, width, copies)]
    if c.mlp_bias:
        out += [Weights(component, _KEEP, 1, width, ups * copies), Weights(component, _KEEP, 1, n_in, copies)]
    return out


def _mamba(c: NemotronHConfig) -> list[Weights]:
    in_proj = 2 * c.mamba_d_inner + 2 * c.n_groups * c.ssm_state_size + c.mamba_num_heads  # z, xBC, dt
    conv = [Weights(MAMBA_C, _KEEP, c.mamba_conv_dim, c.conv_kernel)]
    if c.use_conv_bias:
        conv.append(Weights(MAMBA_C, _KEEP, 1, c.mamba_conv_dim))
    return [
        *_linear(MAMBA_C, c.hidden_size, in_proj, c.mamba_proj_bias),
        *conv,
        Weights(MAMBA_C, _KEEP, 1, c.mamba_num_heads, 3),  # dt_bias, A_log, D
        Weights(MAMBA_C, _KEEP, 1, c.mamba_d_inner),  # gated RMSNorm
        *_linear(MAMBA_C, c.mamba_d_inner, c.hidden_size, c.mamba_proj_bias),
    ]


def _attention(c: NemotronHConfig) -> list[Weights]:
    q = c.num_attention_heads * c.head_dim
    kv = c.num_key_value_heads * c.head_dim
    # qwen2 puts biases on q/k/v only; the others' attention_bias covers o_proj too.
    o_bias = c.attention_bias and c.model_type != "qwen2"
    return [
        *_linear(ATTENTION_C, c.hidden_size, q, c.attention_bias),
        *_linear(ATTENTION_C, c.hidden_size, kv, c.attention_bias),
        *_linear(ATTENTION_C, c.hidden_size, kv, c.attention_bias),
        *_linear(ATTENTION_C, q, c.hidden_size, o_bias),
    ]


def _moe(c: NemotronHConfig) -> list[Weights]:
    out = [Weights(ROUTER, _KEEP, c.n_routed_experts, c.hidden_size)]
    if c.model_type == "nemotron_h":
        out.append(Weights(ROUTER, _FP32, 1, c.n_routed_experts))  # e_score_correction_bias
    if c.moe_latent_size:
        out += _linear(LATENT, c.hidden_size, c.moe_latent_size, False)
        out += _linear(LATENT, c.moe_latent_size, c.hidden_size, False)
    out += _ffn(c, ROUTED, c.expert_input_size, c.moe_intermediate_size, c.n_routed_experts, _EXPERT)
    if c.n_shared_experts and c.moe_shared_expert_intermediate_size:
        out += _ffn(c, SHARED, c.hidden_size, c.moe_shared_expert_intermediate_size, c.n_shared_experts, _LINEAR)
    return out


def layer_weights(c: NemotronHConfig, kind: str) -> list[Weights]:
    """The tensors of one mixer of `kind` (without the block's pre-norm)."""
    if kind == MAMBA:
        return _mamba(c)
    if kind == ATTENTION:
        return _attention(c)
    if kind == MOE:
        return _moe(c)
    if kind == MLP:
        return _ffn(c, MLP_C, c.hidden_size, c.intermediate_size, 1, _LINEAR)
    raise ValueError(f"unknown layer kind {kind!r}")


def _norm(c: NemotronHConfig, copies: int = 1) -> Weights:
    return Weights(NORMS, _KEEP, 1, c.hidden_size, copies)


def backbone_weights(c: NemotronHConfig) -> list[Weights]:
    """Every tensor of the model without MTP: embeddings, layers with their norms, norm_f, lm_head."""
    out = [Weights(EMBEDDING, _KEEP, c.vocab_size, c.hidden_size)]
    for kind in c.layer_types:
        out += layer_weights(c, kind)
    out.append(_norm(c, c.num_layers + 1))
    if not c.tie_word_embeddings:
        out.append(Weights(LM_HEAD, _KEEP, c.vocab_size, c.hidden_size))
    return out


def mtp_weights(c: NemotronHConfig) -> list[Weights]:
    """The MTP module (vLLM's structure): enorm, hnorm, eh_proj (2h -> h), its layers, final norm.

    Embedding and lm_head are shared with the backbone and not counted again.
    """
    out: list[Weights] = []
    for _ in range(c.num_nextn_predict_layers):
        out.append(_norm(c, 3 + len(c.mtp_layer_types)))
        out += _linear(MTP, 2 * c.hidden_size, c.hidden_size, False)  # eh_proj
        for kind in c.mtp_layer_types:
            out += layer_weights(c, kind)
    return out


def _total(weights: list[Weights]) -> int:
    return sum(w.params for w in weights)


def _active(c: NemotronHConfig, weights: list[Weights]) -> int:
    """Parameters a token multiplies: top-k of the routed experts; not the input embedding."""
    share = c.num_experts_per_tok / c.n_routed_experts if c.n_routed_experts else 0.0
    total = 0.0
    for w in weights:
        if w.component == EMBEDDING:
            continue
        total += w.params * share if w.component == ROUTED else w.params
    return round(total)


@dataclass(frozen=True)
class LayerParams:
    """Parameters of one mixer of each kind (0 where the model has no such layer)."""

    mamba: int
    attention: int
    moe: int
    moe_active: int
    mlp: int
    routed_expert: int  # one routed expert


@dataclass(frozen=True)
class ModelAccount:
    """Parameters by component. The ten backbone components sum to `total_params`; `mtp` is apart."""

    embedding: int
    lm_head: int  # 0 when tied to the embedding
    mamba: int
    attention: int
    moe_routed_experts: int
    moe_shared_experts: int
    moe_router: int
    moe_latent_proj: int
    mlp: int
    norms: int
    mtp: int
    active_params: int  # per token, see the module docstring
    mtp_active_params: int  # per token through the MTP module (embedding and lm_head not counted again)
    layer: LayerParams

    def by_component(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COMPONENTS}

    @property
    def total_params(self) -> int:
        return sum(self.by_component().values())

    @property
    def mtp_params(self) -> int:
        return self.mtp

    @property
    def routed_expert_params(self) -> int:
        return self.moe_routed_experts

    @property
    def other_params(self) -> int:
        """Everything but the routed experts."""
        return self.total_params - self.moe_routed_experts


@functools.lru_cache(maxsize=32)
def account(c: NemotronHConfig) -> ModelAccount:
    backbone = backbone_weights(c)
    mtp = mtp_weights(c)
    by_component = {name: 0 for name in COMPONENTS}
    for w in backbone:
        by_component[w.component] += w.params
    present = set(c.layer_types) | set(c.mtp_layer_types)

    def one(kind: str) -> int:
        return _total(layer_weights(c, kind)) if kind in present else 0

    return ModelAccount(
        **by_component,
        mtp=_total(mtp),
        active_params=_active(c, backbone),
        mtp_active_params=_active(c, mtp),
        layer=LayerParams(
            mamba=one(MAMBA),
            attention=one(ATTENTION),
            moe=one(MOE),
            moe_active=_active(c, layer_weights(c, MOE)) if MOE in present else 0,
            mlp=one(MLP),
            routed_expert=_total(_ffn(c, ROUTED, c.expert_input_size, c.moe_intermediate_size, 1, _EXPERT))
            if MOE in present
            else 0,
        ),
    )


@dataclass(frozen=True)
class WeightBytes:
    precision: str
    total_bytes: int  # backbone, without MTP
    by_component: dict[str, int]  # COMPONENTS -> bytes
    routed_expert_bytes: int
    other_bytes: int  # total_bytes - routed_expert_bytes
    mtp_bytes: int
    bits_per_param: float  # average over the backbone
    per_layer: dict[str, int]  # layer kind present in the backbone -> bytes of one layer, its pre-norm included


@functools.lru_cache(maxsize=32)
def weight_bytes(c: NemotronHConfig, precision: str) -> WeightBytes:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    backbone = backbone_weights(c)
    by_component = {name: 0 for name in COMPONENTS}
    for w in backbone:
        by_component[w.component] += w.bytes_at(precision)
    total = sum(by_component.values())
    norm = _norm(c).bytes_at(precision)
    per_layer = {
        kind: sum(w.bytes_at(precision) for w in layer_weights(c, kind)) + norm for kind in dict.fromkeys(c.layer_types)
    }
    return WeightBytes(
        precision=precision,
        total_bytes=total,
        by_component=by_component,
        routed_expert_bytes=by_component[ROUTED],
        other_bytes=total - by_component[ROUTED],
        mtp_bytes=sum(w.bytes_at(MTP_PRECISION.get(precision, precision)) for w in mtp_weights(c)),
        bits_per_param=8 * total / _total(backbone),
        per_layer=per_layer,
    )


# --- caches -------------------------------------------------------------------------------------


def kv_bytes_per_token_per_layer(c: NemotronHConfig, kv_dtype_bytes: float) -> float:
    """K and V of one attention layer for one token (all KV heads: divide by TP for one rank)."""
    return 2 * c.num_key_value_heads * c.head_dim * kv_dtype_bytes


def kv_bytes_per_token(c: NemotronHConfig, kv_dtype_bytes: float) -> float:
    """K and V of one token over every attention layer of the backbone."""
    return c.count(ATTENTION) * kv_bytes_per_token_per_layer(c, kv_dtype_bytes)


def mtp_kv_bytes_per_token(c: NemotronHConfig, kv_dtype_bytes: float) -> float:
    """The MTP module's own attention KV, needed only while speculative decoding runs."""
    layers = c.num_nextn_predict_layers * sum(1 for t in c.mtp_layer_types if t == ATTENTION)
    return layers * kv_bytes_per_token_per_layer(c, kv_dtype_bytes)


def mamba_state_bytes_per_layer(c: NemotronHConfig, ssm_dtype_bytes: float = 4, conv_dtype_bytes: float = 2) -> float:
    """One sequence's recurrent state in one Mamba layer: SSM state plus the conv window.

    Constant in the context length. SSM heads and conv channels split evenly under TP.
    """
    ssm = c.mamba_num_heads * c.mamba_head_dim * c.ssm_state_size * ssm_dtype_bytes
    conv = (c.conv_kernel - 1) * c.mamba_conv_dim * conv_dtype_bytes
    return ssm + conv


def mamba_state_bytes_per_sequence(c: NemotronHConfig, ssm_dtype_bytes: float = 4, conv_dtype_bytes: float = 2) -> float:
    return c.count(MAMBA) * mamba_state_bytes_per_layer(c, ssm_dtype_bytes, conv_dtype_bytes)


# --- FLOPs --------------------------------------------------------------------------------------


def _attention_flops_per_position(c: NemotronHConfig) -> int:
    """QK^T plus PV for one query against one key, over all heads and attention layers."""
    return c.count(ATTENTION) * 2 * 2 * c.num_attention_heads * c.head_dim


def decode_flops_per_token(c: NemotronHConfig, context_len: int) -> float:
    """One generated token: 2 FLOPs per active weight plus attention over `context_len` keys.

    The Mamba recurrence (a few FLOPs per state element, about 0.5% for Ultra) is left out.
    """
    return 2 * account(c).active_params + _attention_flops_per_position(c) * context_len


def prefill_flops(c: NemotronHConfig, prompt_len: int) -> float:
    """A whole prompt: 2 FLOPs per active weight per token plus causal attention (L(L+1)/2 pairs)."""
    pairs = prompt_len * (prompt_len + 1) / 2
    return 2 * account(c).active_params * prompt_len + _attention_flops_per_position(c) * pairs
