"""Gather what the GPU suite needs that the GPU machine lacks, then print the device call that runs it.

    python benchmarks/gpu_prepare.py           # where PyPI is reachable, before a GPU session

Into benchmarks/.vendor/ (git-ignored, carried to the device as one path): vLLM's Triton Mamba
files (benchmarks/kernels.py --setup, the peers of the Mamba kernels); in wheels/, the
distributions the suite imports that the GPU machine's image lacks: pydantic and what it needs,
at the versions installed here, built for that machine's Python (3.12, x86-64 manylinux), which
benchmarks/gpu_suite.sh installs into a private folder before it runs; in checkpoints/, the tiny
model quantized by NVIDIA ModelOpt (MIXED_PRECISION: NVFP4 routed experts, FP8 shared experts)
and its dequantized copy, for the NVFP4 case of the CUDA fidelity test (ModelOpt, which writes
them, is not on the GPU machine). Then checks that the working tree plus the carried folder stay
under the device tool's 64 MiB, and prints the call.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "benchmarks" / ".vendor"
WHEELS = VENDOR / "wheels"
CHECKPOINTS = VENDOR / "checkpoints"  # tests/benchmarks/test_engine_fidelity_by_device.py reads them
# the GPU image (torch, triton, transformers, pytest, pyyaml, psutil, ...) lacks these; see gpu_suite.py's imports step
CARRIED = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
TRAVEL_LIMIT = 64 << 20  # the device tool's limit on the working tree plus carried paths
CALL_TIMEOUT_S = 540  # the device call: gpu_suite.BUDGET_S plus room for Python start-up and the wheels


def fail(message: str) -> None:
    print(f"gpu_prepare: {message}", file=sys.stderr)
    sys.exit(1)


def download_wheels(python_version: str) -> list[Path]:
    shutil.rmtree(WHEELS, ignore_errors=True)  # one version of each: two stop the install there
    WHEELS.mkdir(parents=True)
    pins = []
    for name in CARRIED:
        try:
            pins.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            fail(f"{name} is not installed here; install nemodeploy's base dependencies first")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", "-d", str(WHEELS), *pins]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        fail(f"pip download failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return sorted(WHEELS.glob("*.whl"))


def write_modelopt_pair(target: Path) -> tuple[Path, Path]:
    """(the tiny model as a ModelOpt MIXED_PRECISION checkpoint, its dequantized copy) under `target`.

    The copy is dequantized by ModelOpt's own classes (tests/engine/modelopt_harness.py), not by
    the engine's code, so transformers running it is an independent reference.
    """
    from nemodeploy.engine.tiny import write_tiny_modelopt_checkpoint

    sys.path.insert(0, str(ROOT / "tests" / "engine"))
    from modelopt_harness import dequantized_copy

    quantized = write_tiny_modelopt_checkpoint(target / "modelopt-mixed", "MIXED_PRECISION")
    return quantized, dequantized_copy(quantized, target / "modelopt-mixed-dequantized")


def travelling_bytes() -> int:
    """Tracked plus untracked-not-ignored files (what the device tool sends) plus benchmarks/.vendor."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    tree = sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file())
    return tree + sum(p.stat().st_size for p in VENDOR.rglob("*") if p.is_file())


def prepare(python_version: str) -> None:
    import kernels

    print("vendoring vLLM's Triton Mamba files ...", flush=True)
    kernels.setup_vendor(kernels.VLLM_VERSION)
    wheels = download_wheels(python_version)
    print(f"{len(wheels)} wheels in {WHEELS.relative_to(ROOT)}: {', '.join(w.name for w in wheels)}")
    shutil.rmtree(CHECKPOINTS, ignore_errors=True)
    if importlib.util.find_spec("modelopt") is None:
        print("nvidia-modelopt is not installed here (the `quant` extra): the suite's NVFP4 fidelity case will skip")
    else:
        print("writing the tiny ModelOpt MIXED_PRECISION checkpoint and its dequantized copy ...", flush=True)
        pair = write_modelopt_pair(CHECKPOINTS)
        print(f"checkpoints: {', '.join(str(p.relative_to(ROOT)) for p in pair)}")


def main() -> None:
    parser = argparse.ArgumentParser(description="prepare benchmarks/.vendor for the GPU suite and print the device call")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_suite

    try:
        prepare(args.python_version)
    except (subprocess.CalledProcessError, ImportError, OSError) as exc:
        fail(f"{type(exc).__name__}: {exc}")
    size = travelling_bytes()
    if size > TRAVEL_LIMIT:
        fail(f"the working tree and benchmarks/.vendor come to {size / 2**20:.1f} MiB, over the device tool's 64 MiB")
    print(f"travels: {size / 2**20:.1f} MiB of 64 MiB\n")
    print("Check it here first:  bash benchmarks/gpu_suite.sh --dry-run /tmp/gpu-suite-dry-run")
    print("Then, in a session with a GPU, one device call (results come back as at most 8 files):")
    print(f'  run(command="bash benchmarks/gpu_suite.sh $OUT", carry=["benchmarks/.vendor"], timeout_s={CALL_TIMEOUT_S})')
    print(f"  (the suite stops itself after {gpu_suite.BUDGET_S} s; --budget changes that, --only STEP,STEP reruns some steps)")


if __name__ == "__main__":
    main()
