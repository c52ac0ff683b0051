"""The accounting reproduces the published and derived figures of shared/reference/nemotron3-ultra.md."""

import json

import pytest

from nemodeploy.models.accounting import (
    PRECISIONS,
    account,
    decode_flops_per_token,
    kv_bytes_per_token,
    kv_bytes_per_token_per_layer,
    mamba_state_bytes_per_layer,
    mamba_state_bytes_per_sequence,
    prefill_flops,
    weight_bytes,
)
from nemodeploy.models.config import NemotronHConfig
from nemodeploy.models.specs import SPECS

B = 1e9


def spec(name: str) -> NemotronHConfig:
    return NemotronHConfig.from_file(SPECS[name].file)


@pytest.fixture(scope="module")
def ultra() -> NemotronHConfig:
    return spec("nemotron-3-ultra")


def close(value: float, expected: float, rel: float = 1e-3) -> bool:
    return value == pytest.approx(expected, rel=rel)


def test_ultra_has_549_3_b_parameters_of_which_55_0_b_active(ultra):
    a = account(ultra)
    assert round(a.total_params / B, 1) == 549.3
    assert round(a.active_params / B, 1) == 55.0


def test_ultra_per_layer_figures_match_the_reference_table(ultra):
    layer = account(ultra).layer
    assert close(layer.mamba, 421.6e6)
    assert close(layer.attention, 138.4e6)
    assert close(layer.moe, 10.94e9)
    assert close(layer.moe_active, 0.667e9)
    assert layer.routed_expert == 2 * 2048 * 5120  # up and down in the 2048-wide latent, no gate


def test_ultra_routed_experts_are_515_4_b_and_everything_else_33_9_b(ultra):
    a = account(ultra)
    assert round(a.routed_expert_params / B, 1) == 515.4
    assert round(a.other_params / B, 1) == 33.9
    assert a.embedding == a.lm_head == 131072 * 8192  # untied


def test_ultra_mtp_is_about_11_2_b_and_outside_the_total(ultra):
    a = account(ultra)
    assert round(a.mtp_params / B, 1) == 11.2
    assert a.total_params == sum(a.by_component().values())


def test_ultra_weighs_1_121_gb_in_bf16_and_the_published_352_gb_in_nvfp4(ultra):
    bf16 = weight_bytes(ultra, "bf16")
    assert round((bf16.total_bytes + bf16.mtp_bytes) / B) == 1121  # NVIDIA: "1,121 GB in BF16"
    nvfp4 = weight_bytes(ultra, "nvfp4")
    # NVIDIA: "down to 352.3 GB" for the whole checkpoint, MTP included
    assert abs((nvfp4.total_bytes + nvfp4.mtp_bytes) / B - 352.3) < 0.5
    # 4 bits + one FP8 scale per 16 values on the routed experts
    assert close(nvfp4.routed_expert_bytes, account(ultra).routed_expert_params * 4.5 / 8)
    # shared experts and Mamba projections FP8 per tensor: just over half of their BF16 bytes
    for fp8_part in ("moe_shared_experts", "mamba"):
        assert 0.5 < nvfp4.by_component[fp8_part] / bf16.by_component[fp8_part] < 0.51
    for kept in ("attention", "moe_latent_proj", "moe_router", "embedding", "lm_head", "norms"):
        assert nvfp4.by_component[kept] == bf16.by_component[kept]
    assert nvfp4.mtp_bytes == bf16.mtp_bytes, "the NVFP4 checkpoint keeps MTP in BF16"


def test_fp8_halves_the_linear_weights_but_keeps_embeddings_and_router_in_bf16(ultra):
    bf16, fp8 = weight_bytes(ultra, "bf16"), weight_bytes(ultra, "fp8")
    for kept in ("embedding", "lm_head", "moe_router", "norms"):
        assert fp8.by_component[kept] == bf16.by_component[kept]
    # 1 byte per weight plus fp32 per-channel scales: just over half of bf16.
    assert 0.5 < fp8.by_component["moe_routed_experts"] / bf16.by_component["moe_routed_experts"] < 0.502


def test_weight_bytes_orders_precisions_and_rejects_unknown_ones(ultra):
    sizes = [weight_bytes(ultra, p).total_bytes for p in ("nvfp4", "fp8", "bf16", "fp32")]
    assert sizes == sorted(sizes) and set(PRECISIONS) == {"nvfp4", "fp8", "bf16", "fp32"}
    with pytest.raises(ValueError, match="known: bf16"):
        weight_bytes(ultra, "int3")


def test_per_layer_bytes_add_up_to_the_layers_share_of_the_total(ultra):
    w = weight_bytes(ultra, "nvfp4")
    layers = sum(w.per_layer[kind] * ultra.count(kind) for kind in w.per_layer)
    outside = w.by_component["embedding"] + w.by_component["lm_head"] + 2 * ultra.hidden_size  # norm_f
    assert layers + outside == w.total_bytes


def test_ultra_kv_cache_is_12288_bytes_per_token_in_bf16_and_6144_in_fp8(ultra):
    assert kv_bytes_per_token(ultra, 2) == 12_288
    assert kv_bytes_per_token(ultra, 1) == 6_144
    assert kv_bytes_per_token_per_layer(ultra, 2) * 12 == 12_288


def test_ultra_mamba_state_is_about_408_mb_per_sequence(ultra):
    per_layer = 256 * 64 * 128 * 4 + 3 * 18432 * 2
    assert mamba_state_bytes_per_layer(ultra) == per_layer
    assert mamba_state_bytes_per_sequence(ultra) == 48 * per_layer
    assert round(mamba_state_bytes_per_sequence(ultra) / 1e6) == 408


def test_decode_flops_grow_with_context_only_through_attention(ultra):
    base = decode_flops_per_token(ultra, 0)
    assert base == 2 * account(ultra).active_params
    # 12 layers x (QK + PV) x 64 heads x 128 dims x 2 FLOPs per key
    assert decode_flops_per_token(ultra, 1000) - base == 1000 * 12 * 2 * 2 * 64 * 128


def test_prefill_flops_are_the_tokens_weights_plus_causal_attention(ultra):
    one_token = prefill_flops(ultra, 1)
    assert one_token == decode_flops_per_token(ultra, 1)
    attention = prefill_flops(ultra, 100) - 100 * 2 * account(ultra).active_params
    assert attention == 12 * 2 * 2 * 64 * 128 * (100 * 101 / 2)


def _rewrite(cfg: dict, **changes) -> NemotronHConfig:
    out = dict(cfg)
    out.pop("hybrid_override_pattern")
    out.pop("mtp_hybrid_override_pattern")
    out.update(changes)
    return NemotronHConfig.from_dict(out)


def test_every_spelling_of_the_layer_pattern_gives_the_same_account(ultra):
    raw = json.loads(SPECS["nemotron-3-ultra"].file.read_text())
    old = {"M": "mamba", "E": "moe", "*": "attention"}
    new = {"M": "linear_attention", "E": "moe", "*": "full_attention"}
    pattern = raw["hybrid_override_pattern"]
    old_style = _rewrite(
        raw,
        num_hidden_layers=None,
        layers_block_type=[old[ch] for ch in pattern],
        mtp_layers_block_type=["attention", "moe"],
    )
    transformers5 = _rewrite(
        raw,
        layers_block_type=[new[ch] for ch in pattern],
        mtp_layers_block_type=["full_attention", "moe"],
    )
    assert account(old_style) == account(transformers5) == account(ultra)


def test_nemotron_3_super_matches_its_published_checkpoint_exactly():
    # The BF16 checkpoint's safetensors hold 123,611,033,088 values, MTP and fp32 router biases included.
    a = account(spec("nemotron-3-super"))
    assert a.total_params + a.mtp_params == 123_611_033_088
    assert round(a.active_params / B, 1) == 12.2  # "A12B"


def test_nemotron_3_nano_is_31_6_b_with_3_2_b_active_and_3_6_b_with_embeddings():
    a = account(spec("nemotron-3-nano"))
    assert round(a.total_params / B, 1) == 31.6
    assert round(a.active_params / B, 1) == 3.2
    assert round((a.active_params + a.embedding) / B, 1) == 3.6
    assert a.mtp_params == 0


LLAMA_3_1_8B = {  # meta-llama/Llama-3.1-8B config.json
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
}

MIXTRAL_8X7B = {  # mistralai/Mixtral-8x7B-v0.1 config.json
    "model_type": "mixtral",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "tie_word_embeddings": False,
}


def test_a_dense_llama_counts_its_published_8_03_b_parameters():
    a = account(NemotronHConfig.from_dict(LLAMA_3_1_8B))
    assert a.total_params == 8_030_261_248  # the Hugging Face model page's exact count
    assert a.active_params == a.total_params - a.embedding  # dense: everything but the lookup


def test_mixtral_counts_46_7_b_total_and_12_9_b_active_with_its_embedding():
    a = account(NemotronHConfig.from_dict(MIXTRAL_8X7B))
    assert a.total_params == 46_702_792_704  # the Hugging Face model page's exact count
    assert a.layer.routed_expert == 3 * 4096 * 14336  # gated SwiGLU experts
    # Mistral's "12.9B active" counts the embedding table; our active_params does not.
    assert round((a.active_params + a.embedding) / B, 1) == 12.9
    assert round(a.active_params / B, 2) == 12.75


def test_tied_embeddings_are_counted_once():
    a = account(NemotronHConfig.from_dict({**LLAMA_3_1_8B, "tie_word_embeddings": True}))
    assert a.lm_head == 0
    assert a.total_params == 8_030_261_248 - 128256 * 4096
