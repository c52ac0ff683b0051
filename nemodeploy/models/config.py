"""A Nemotron-H architecture read from an HF `config.json`, whatever spelling the file uses.

Real files spell the layer pattern three ways (see shared/reference): the string
`hybrid_override_pattern` (M E * -), older `layers_block_type` lists (mamba /
attention / moe / mlp), and transformers 5.x lists (linear_attention /
full_attention / moe / mlp). They all become the canonical names below. Plain
dense and MoE decoder configs (llama, mistral, qwen2/3, mixtral, qwen*_moe) are
read as all-attention layers so that the planner can account them too.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAMBA, ATTENTION, MOE, MLP = "mamba", "attention", "moe", "mlp"
LAYER_KINDS = (MAMBA, ATTENTION, MOE, MLP)

_PATTERN_CHARS = {"M": MAMBA, "*": ATTENTION, "E": MOE, "-": MLP}
_LIST_SPELLINGS = {
    "mamba": MAMBA,
    "linear_attention": MAMBA,
    "attention": ATTENTION,
    "full_attention": ATTENTION,
    "moe": MOE,
    "mlp": MLP,
}


class ConfigError(ValueError):
    """A config.json that does not describe a model nemodeploy can account or run."""


def parse_layer_pattern(value: str | list[str], field_name: str) -> list[str]:
    if isinstance(value, str):
        unknown = sorted(set(value) - set(_PATTERN_CHARS))
        if unknown:
            raise ConfigError(f"{field_name}: unknown layer characters {unknown} (known: M E * -)")
        return [_PATTERN_CHARS[c] for c in value]
    kinds = []
    for entry in value:
        if entry not in _LIST_SPELLINGS:
            raise ConfigError(f"{field_name}: unknown layer type {entry!r}")
        kinds.append(_LIST_SPELLINGS[entry])
    return kinds


def _token_ids(value: Any) -> int | tuple[int, ...] | None:
    return tuple(value) if isinstance(value, list) else value


def _float(value: Any) -> float:
    """transformers writes infinity as {"__float__": "Infinity"}."""
    if isinstance(value, dict) and "__float__" in value:
        return float(value["__float__"])
    return float(value)


@dataclass(frozen=True)
class NemotronHConfig:
    """The architecture, with canonical names. Every size the planner and engine need."""

    model_type: str
    vocab_size: int
    hidden_size: int
    layer_types: tuple[str, ...]
    # attention
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    attention_bias: bool = False
    # Mamba-2
    mamba_num_heads: int = 0
    mamba_head_dim: int = 0
    ssm_state_size: int = 0
    n_groups: int = 1
    conv_kernel: int = 4
    chunk_size: int = 128
    use_conv_bias: bool = True
    mamba_proj_bias: bool = False
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    mamba_ssm_cache_dtype: str = "float32"
    # dense MLP layers
    intermediate_size: int = 0
    mlp_bias: bool = False
    mlp_hidden_act: str = "relu2"
    gated_mlp: bool = False  # llama-style gate/up/down instead of up/down
    # MoE
    n_routed_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    n_shared_experts: int = 0
    moe_shared_expert_intermediate_size: int = 0
    moe_latent_size: int | None = None
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    n_group: int = 1
    topk_group: int = 1
    # MTP
    num_nextn_predict_layers: int = 0
    mtp_layer_types: tuple[str, ...] = ()
    # misc
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = False
    residual_in_fp32: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2  # a tuple keeps the config hashable (accounting caches on it)
    pad_token_id: int | None = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    def count(self, kind: str) -> int:
        return sum(1 for t in self.layer_types if t == kind)

    @property
    def mamba_d_inner(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def mamba_conv_dim(self) -> int:
        return self.mamba_d_inner + 2 * self.n_groups * self.ssm_state_size

    @property
    def expert_input_size(self) -> int:
        """Width the routed experts see: the latent when LatentMoE, else the hidden size."""
        return self.moe_latent_size or self.hidden_size

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("raw")
        return out

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "NemotronHConfig":
        model_type = cfg.get("model_type", "")
        try:
            if model_type == "nemotron_h":
                return cls._from_nemotron_h(cfg)
            if model_type in _DENSE_OR_MOE_TYPES:
                return cls._from_decoder(cfg)
        except KeyError as err:
            raise ConfigError(f"config.json of model_type {model_type!r} lacks {err.args[0]!r}") from None
        raise ConfigError(
            f"model_type {model_type!r} is not supported (nemotron_h; dense/MoE: {', '.join(sorted(_DENSE_OR_MOE_TYPES))})"
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "NemotronHConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}:{err.colno}: {err.msg}") from None

    @classmethod
    def _from_nemotron_h(cls, cfg: dict[str, Any]) -> "NemotronHConfig":
        if "hybrid_override_pattern" in cfg and cfg["hybrid_override_pattern"]:
            layers = parse_layer_pattern(cfg["hybrid_override_pattern"], "hybrid_override_pattern")
        elif cfg.get("layers_block_type"):
            layers = parse_layer_pattern(cfg["layers_block_type"], "layers_block_type")
        else:
            raise ConfigError("config.json gives neither hybrid_override_pattern nor layers_block_type")
        mtp_layers: list[str] = []
        if cfg.get("num_nextn_predict_layers", 0):
            if cfg.get("mtp_hybrid_override_pattern"):
                mtp_layers = parse_layer_pattern(cfg["mtp_hybrid_override_pattern"], "mtp_hybrid_override_pattern")
            else:
                mtp_layers = parse_layer_pattern(
                    cfg.get("mtp_layers_block_type") or ["attention", "moe"], "mtp_layers_block_type"
                )
        hidden = cfg["hidden_size"]
        heads = cfg.get("num_attention_heads", 32)
        limit = cfg.get("time_step_limit", cfg.get("mamba_dt_limit", (0.0, math.inf)))
        return cls(
            model_type="nemotron_h",
            vocab_size=cfg["vocab_size"],
            hidden_size=hidden,
            layer_types=tuple(layers),
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            attention_bias=cfg.get("attention_bias", False),
            mamba_num_heads=cfg.get("mamba_num_heads", 128),
            mamba_head_dim=cfg.get("mamba_head_dim", 64),
            ssm_state_size=cfg.get("ssm_state_size", 128),
            n_groups=cfg.get("n_groups", cfg.get("mamba_n_groups", 8)),
            conv_kernel=cfg.get("conv_kernel", cfg.get("mamba_d_conv", 4)),
            chunk_size=cfg.get("chunk_size", cfg.get("mamba_chunk_size", 128)),
            use_conv_bias=cfg.get("use_conv_bias", cfg.get("mamba_conv_bias", True)),
            mamba_proj_bias=cfg.get("mamba_proj_bias", False),
            time_step_min=cfg.get("time_step_min", cfg.get("mamba_dt_min", 0.001)),
            time_step_max=cfg.get("time_step_max", cfg.get("mamba_dt_max", 0.1)),
            time_step_floor=cfg.get("time_step_floor", cfg.get("mamba_dt_init_floor", 1e-4)),
            time_step_limit=(_float(limit[0]), _float(limit[1])),
            mamba_ssm_cache_dtype=cfg.get("mamba_ssm_cache_dtype", "float32"),
            intermediate_size=cfg.get("intermediate_size", 0),
            mlp_bias=cfg.get("mlp_bias", False),
            mlp_hidden_act=cfg.get("mlp_hidden_act", "relu2"),
            n_routed_experts=cfg.get("n_routed_experts", 0),
            num_experts_per_tok=cfg.get("num_experts_per_tok", 0),
            moe_intermediate_size=cfg.get("moe_intermediate_size", 0),
            n_shared_experts=cfg.get("n_shared_experts", 1) if MOE in layers or MOE in mtp_layers else 0,
            moe_shared_expert_intermediate_size=cfg.get("moe_shared_expert_intermediate_size", 0),
            moe_latent_size=cfg.get("moe_latent_size"),
            routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
            norm_topk_prob=cfg.get("norm_topk_prob", True),
            n_group=cfg.get("n_group", 1),
            topk_group=cfg.get("topk_group", 1),
            num_nextn_predict_layers=cfg.get("num_nextn_predict_layers", 0),
            mtp_layer_types=tuple(mtp_layers),
            layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-5),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            residual_in_fp32=cfg.get("residual_in_fp32", False),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            bos_token_id=cfg.get("bos_token_id", 1),
            eos_token_id=_token_ids(cfg.get("eos_token_id", 2)),
            pad_token_id=cfg.get("pad_token_id", 0),
            raw=cfg,
        )

    @classmethod
    def _from_decoder(cls, cfg: dict[str, Any]) -> "NemotronHConfig":
        """A plain decoder: every layer is attention followed by an MLP or an MoE.

        Represented as alternating attention / (mlp|moe) layers, the same way Nemotron-H
        separates mixers, so the accounting code needs one path.
        """
        hidden = cfg["hidden_size"]
        heads = cfg["num_attention_heads"]
        experts = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 0
        ffn = MOE if experts else MLP
        layers: list[str] = []
        for _ in range(cfg["num_hidden_layers"]):
            layers += [ATTENTION, ffn]
        shared = cfg.get("shared_expert_intermediate_size") or 0
        return cls(
            model_type=cfg["model_type"],
            vocab_size=cfg["vocab_size"],
            hidden_size=hidden,
            layer_types=tuple(layers),
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            attention_bias=cfg.get("attention_bias", cfg["model_type"] == "qwen2"),
            intermediate_size=cfg.get("intermediate_size", 0),
            gated_mlp=True,
            mlp_hidden_act=cfg.get("hidden_act", "silu"),
            n_routed_experts=experts,
            num_experts_per_tok=cfg.get("num_experts_per_tok", 0),
            moe_intermediate_size=cfg.get("moe_intermediate_size") or cfg.get("intermediate_size", 0),
            n_shared_experts=1 if shared else 0,
            moe_shared_expert_intermediate_size=shared,
            layer_norm_epsilon=cfg.get("rms_norm_eps", 1e-5),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            raw=cfg,
        )


_DENSE_OR_MOE_TYPES = {"llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe"}
