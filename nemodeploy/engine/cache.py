"""The hybrid cache: paged attention KV plus a pool of Mamba state slots, and their byte sizes.

The planner decides the counts (num_kv_blocks, block_size, num_mamba_slots); this module
turns them into tensors and says what one block / one slot costs on one rank.

Speculative decoding: a verify step runs k+1 tokens per sequence through the recurrent
Mamba path with `BatchMetadata.save_spec_states`; the Mamba ops then also write the conv and
SSM state after each of the k+1 tokens into `spec_conv` / `spec_ssm` (indexed by the
sequence's row in the verify batch). The slot itself ends at the state after all k+1 tokens.
`commit(mamba_slots, num_kept)` then rolls each slot back to the state after its
`num_kept` tokens (the verified input token plus the accepted drafts), before the next
forward. Rejected attention KV needs no rollback: those positions are rewritten later.

Prefix caching keeps Mamba states of cached prefixes in `num_checkpoints` more conv / SSM
entries per layer (the same shapes as a slot): `save_checkpoint` copies a slot's state into
one, `restore_checkpoint` copies one into the slot of a request that resumes there.
"""

from __future__ import annotations

import torch

from nemodeploy.engine.model.parallel import ParallelConfig, shard_range
from nemodeploy.models.config import ATTENTION, MAMBA, NemotronHConfig


def layer_key(index: int) -> str:
    return f"backbone.layers.{index}"


def mtp_layer_key(index: int) -> str:
    return f"mtp.layers.{index}"


def attention_keys(config: NemotronHConfig, include_mtp: bool, layers: range | None = None) -> list[str]:
    """Cache keys of the attention layers among `layers` (default: all), then the MTP head's."""
    keys = [layer_key(i) for i, t in enumerate(config.layer_types) if t == ATTENTION and (layers is None or i in layers)]
    if include_mtp:
        keys += [mtp_layer_key(i) for i, t in enumerate(config.mtp_layer_types) if t == ATTENTION]
    return keys


def mamba_keys(config: NemotronHConfig, layers: range | None = None) -> list[str]:
    return [layer_key(i) for i, t in enumerate(config.layer_types) if t == MAMBA and (layers is None or i in layers)]


def local_kv_heads(config: NemotronHConfig, parallel: ParallelConfig) -> int:
    return shard_range(config.num_key_value_heads, parallel.tp_rank, parallel.tp_size)[1]


def local_mamba_dims(config: NemotronHConfig, parallel: ParallelConfig) -> tuple[int, int]:
    """(Mamba heads, conv channels) on one rank."""
    heads = shard_range(config.mamba_num_heads, parallel.tp_rank, parallel.tp_size)[1]
    groups = shard_range(config.n_groups, parallel.tp_rank, parallel.tp_size)[1]
    return heads, heads * config.mamba_head_dim + 2 * groups * config.ssm_state_size


def ssm_dtype(config: NemotronHConfig) -> torch.dtype:
    return getattr(torch, config.mamba_ssm_cache_dtype)


def kv_bytes_per_block(
    config: NemotronHConfig, block_size: int, dtype: torch.dtype, parallel: ParallelConfig = ParallelConfig(), include_mtp: bool = False,
    layers: range | None = None,
) -> int:
    per_layer = 2 * block_size * local_kv_heads(config, parallel) * config.head_dim * dtype.itemsize
    return per_layer * len(attention_keys(config, include_mtp, layers))


def mamba_bytes_per_slot(config: NemotronHConfig, conv_dtype: torch.dtype, parallel: ParallelConfig = ParallelConfig(),
                         layers: range | None = None) -> int:
    heads, channels = local_mamba_dims(config, parallel)
    conv = channels * (config.conv_kernel - 1) * conv_dtype.itemsize
    ssm = heads * config.mamba_head_dim * config.ssm_state_size * ssm_dtype(config).itemsize
    return (conv + ssm) * len(mamba_keys(config, layers))


class HybridCache:
    """Cache tensors of one rank. KV: [num_kv_blocks, block_size, kv_heads, head_dim] per layer;
    Mamba: conv [num_mamba_slots, channels, conv_kernel - 1] and SSM [num_mamba_slots, heads,
    head_dim, state] (in `mamba_ssm_cache_dtype`) per layer. Keyed by the layer's checkpoint path.
    A pipeline stage holds the layers in `layers` only (default: all).
    """

    def __init__(
        self,
        config: NemotronHConfig,
        num_kv_blocks: int,
        block_size: int,
        num_mamba_slots: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        parallel: ParallelConfig = ParallelConfig(),
        include_mtp: bool = False,
        num_spec_tokens: int = 0,
        max_spec_seqs: int = 0,
        num_checkpoints: int = 0,
        kv_dtype: torch.dtype | None = None,
        layers: range | None = None,
    ) -> None:
        self.block_size = block_size
        kv_shape = (num_kv_blocks, block_size, local_kv_heads(config, parallel), config.head_dim)
        kv_dtype = kv_dtype or dtype  # float8_e4m3fn: an FP8 KV cache (model/attention.py applies the scales)
        self.kv = {
            key: (torch.zeros(kv_shape, dtype=kv_dtype, device=device), torch.zeros(kv_shape, dtype=kv_dtype, device=device))
            for key in attention_keys(config, include_mtp, layers)
        }
        heads, channels = local_mamba_dims(config, parallel)
        conv_shape = (channels, config.conv_kernel - 1)
        ssm_shape = (heads, config.mamba_head_dim, config.ssm_state_size)
        self.conv = {k: torch.zeros((num_mamba_slots, *conv_shape), dtype=dtype, device=device) for k in mamba_keys(config, layers)}
        self.ssm = {k: torch.zeros((num_mamba_slots, *ssm_shape), dtype=ssm_dtype(config), device=device) for k in mamba_keys(config, layers)}
        spec = (max_spec_seqs, num_spec_tokens + 1) if num_spec_tokens else (0, 0)
        self.spec_conv = {k: torch.zeros((*spec, *conv_shape), dtype=dtype, device=device) for k in self.conv}
        self.spec_ssm = {k: torch.zeros((*spec, *ssm_shape), dtype=ssm_dtype(config), device=device) for k in self.ssm}
        self.ckpt_conv = {k: torch.zeros((num_checkpoints, *conv_shape), dtype=dtype, device=device) for k in self.conv}
        self.ckpt_ssm = {k: torch.zeros((num_checkpoints, *ssm_shape), dtype=ssm_dtype(config), device=device) for k in self.ssm}

    def save_checkpoint(self, slot: int, index: int) -> None:
        for key in self.conv:
            self.ckpt_conv[key][index] = self.conv[key][slot]
            self.ckpt_ssm[key][index] = self.ssm[key][slot]

    def restore_checkpoint(self, index: int, slot: int) -> None:
        for key in self.conv:
            self.conv[key][slot] = self.ckpt_conv[key][index]
            self.ssm[key][slot] = self.ckpt_ssm[key][index]

    def verify_states(self, row: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Copies of verify row `row`'s per-token conv and SSM states, for a pipeline stage that learns
        how many tokens were kept only after a later stage sampled (`commit_saved`)."""
        return ({k: v[row].clone() for k, v in self.spec_conv.items()},
                {k: v[row].clone() for k, v in self.spec_ssm.items()})

    def commit_saved(self, slot: int, states: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
                     num_kept: int) -> None:
        """`commit` for one slot from `verify_states`' copies."""
        conv, ssm = states
        for key in self.conv:
            self.conv[key][slot] = conv[key][num_kept - 1]
            self.ssm[key][slot] = ssm[key][num_kept - 1]

    def commit(self, mamba_slots: torch.Tensor, num_kept: torch.Tensor) -> None:
        """After a verify step: set each slot to its state after `num_kept` (>= 1) of its k+1 tokens.

        mamba_slots[i] and num_kept[i] refer to row i of the verify batch (its recurrent rows).
        """
        rows = torch.arange(len(mamba_slots), device=mamba_slots.device)
        last = num_kept.to(mamba_slots.device).long() - 1
        for key in self.conv:
            self.conv[key][mamba_slots] = self.spec_conv[key][rows, last]
            self.ssm[key][mamba_slots] = self.spec_ssm[key][rows, last]
