"""Where an accelerator kind's pods may run: its device-plugin resource, node labels and taints.

NVIDIA: the device plugin's `nvidia.com/gpu`; GPU feature discovery labels each node
`nvidia.com/gpu.product` with the NVML device name, spaces turned to dashes (the names
below are what `nvidia-smi --query-gpu=name` prints for each part); GPU nodes are commonly
tainted `nvidia.com/gpu:NoSchedule`, which the pods tolerate. AMD: the ROCm device plugin's
`amd.com/gpu`; its node labeller's `-device-id` label holds the PCI device id. A kind without
a known label is selected by the presence label alone; `spec.nodeSelector` adds to (and
overrides) all of this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nemodeploy.topology.catalog import ACCELERATORS

_NVIDIA_PRODUCT = {
    "h100-sxm": "NVIDIA-H100-80GB-HBM3",
    "h200": "NVIDIA-H200",
    "a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "b200": "NVIDIA-B200",
    "b300": "NVIDIA-B300-SXM6-AC",
    "gb200": "NVIDIA-GB200",
    "gb300": "NVIDIA-GB300",
    "gb10": "NVIDIA-GB10",
}
_AMD_DEVICE_ID = {"mi300x": "74a1", "mi355x": "75a3"}


@dataclass(frozen=True)
class Scheduling:
    resource: str | None  # the extended resource one accelerator is requested as; None: the host CPU
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)


def scheduling(kind: str) -> Scheduling:
    accel = ACCELERATORS[kind]
    if accel.vendor == "nvidia":
        product = _NVIDIA_PRODUCT.get(accel.kind)
        selector = {"nvidia.com/gpu.product": product} if product else {"nvidia.com/gpu.present": "true"}
        return Scheduling("nvidia.com/gpu", selector, [_tolerate("nvidia.com/gpu")])
    if accel.vendor == "amd":
        device = _AMD_DEVICE_ID.get(accel.kind)
        selector = {"amd.com/gpu.device-id": device} if device else {}
        return Scheduling("amd.com/gpu", selector, [_tolerate("amd.com/gpu")])
    return Scheduling(None)


def _tolerate(key: str) -> dict:
    return {"key": key, "operator": "Exists", "effect": "NoSchedule"}
