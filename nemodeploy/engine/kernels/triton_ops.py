"""Triton implementations that `get_kernels` swaps in on CUDA (NEMODEPLOY_KERNELS=torch keeps the references).

Ops missing here (rms_norm, write_kv) keep their PyTorch reference.
"""

from nemodeploy.engine.kernels import triton_attention, triton_mamba, triton_moe, triton_nvfp4

KERNELS = {
    "gated_rms_norm": triton_mamba.gated_rms_norm,
    "causal_conv1d_varlen": triton_mamba.causal_conv1d_varlen,
    "causal_conv1d_update": triton_mamba.causal_conv1d_update,
    "ssd_chunk_scan_varlen": triton_mamba.ssd_chunk_scan_varlen,
    "selective_state_update": triton_mamba.selective_state_update,
    "moe_route": triton_moe.moe_route,
    "routed_experts": triton_moe.routed_experts,
    "routed_experts_nvfp4": triton_nvfp4.routed_experts_nvfp4,
    "linear_nvfp4": triton_nvfp4.linear_nvfp4,
    "paged_attention": triton_attention.paged_attention,
}
