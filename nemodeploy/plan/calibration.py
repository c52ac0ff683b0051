"""The estimate's measured constants, read once from data/calibration.yaml (sourced there).

Typed access only: which efficiency an architecture reaches, which MoE kernel a checkpoint
runs with, how MTP drafts are accepted. The numbers themselves live in the data file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import yaml


@dataclass(frozen=True)
class ArchEfficiency:
    weight_stream: float
    cache_stream: float
    layer_overhead_s: float
    prefill_compute: float
    source: str


@dataclass(frozen=True)
class MoeKernel:
    kernel: str
    expert_efficiency: float
    untuned_layer_s: float  # 0 where a tuned kernel exists
    source: str

    @property
    def untuned(self) -> bool:
        return self.untuned_layer_s > 0


@dataclass(frozen=True)
class Collectives:
    link_efficiency: float
    software_latency_s: float
    intra_node_hop_s: float


@dataclass(frozen=True)
class Calibration:
    archs: dict[str, ArchEfficiency]
    moe_kernels: tuple[dict, ...]
    collectives: Collectives
    mtp_acceptance: tuple[float, ...]
    memory_utilization: dict[str, float]
    error_band: tuple[float, float]

    def arch(self, arch: str) -> ArchEfficiency:
        return self.archs[arch]

    def moe_kernel(self, arch: str, weights: str, routed_experts: int) -> MoeKernel:
        """The first rule matching the architecture, the checkpoint precision and the expert count."""
        for rule in self.moe_kernels:
            if arch in rule["arch"] and weights in rule["weights"] and (
                    "routed_experts" not in rule or routed_experts in rule["routed_experts"]):
                return MoeKernel(rule["kernel"], rule["expert_efficiency"], rule.get("untuned_moe_layer_ms", 0) / 1e3,
                                 rule["source"])
        raise KeyError(f"no MoE kernel rule for {weights} on {arch}")

    def default_memory_utilization(self, arch: str) -> float:
        return self.memory_utilization.get(arch, self.memory_utilization["default"])

    def tokens_per_step(self, drafts: int) -> float:
        """Expected tokens per decode step with `drafts` MTP draft tokens: 1 + sum of P(first i accepted)."""
        expected, chain = 1.0, 1.0
        for position in range(drafts):
            chain *= self.mtp_acceptance[min(position, len(self.mtp_acceptance) - 1)]
            expected += chain
        return expected


@functools.lru_cache(maxsize=1)
def calibration() -> Calibration:
    raw = yaml.safe_load(resources.files("nemodeploy.plan").joinpath("data/calibration.yaml").read_text())
    archs = {
        name: ArchEfficiency(v["weight_stream_efficiency"], v["cache_stream_efficiency"], v["layer_overhead_us"] / 1e6,
                             v["prefill_compute_efficiency"], v["source"])
        for name, v in raw["archs"].items()
    }
    c = raw["collectives"]
    utilization = {k: v for k, v in raw["memory_utilization"].items() if k != "source"}
    return Calibration(
        archs=archs, moe_kernels=tuple(raw["moe_kernels"]),
        collectives=Collectives(c["link_efficiency"], c["software_latency_us"] / 1e6, c["intra_node_hop_us"] / 1e6),
        mtp_acceptance=tuple(raw["mtp_acceptance"]), memory_utilization=utilization,
        error_band=tuple(raw["error_band"]),
    )
