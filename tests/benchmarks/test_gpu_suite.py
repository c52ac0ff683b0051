"""The GPU suite's dry run on CPU: every step's imports and code paths at tiny sizes, so that a
session with a GPU spends its minutes measuring, not fixing the suite (issue 19)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# find_spec, not importorskip: importing triton here, before tests/kernels sets TRITON_INTERPRET,
# would fix triton.language's own functions as compiled ones for the whole session
if importlib.util.find_spec("triton") is None:
    pytest.skip("the kernels' dry run needs Triton's interpreter", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_suite  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("gpu-suite")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", str(results)],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHON": sys.executable})
    return proc, results


def test_dry_run_passes_every_step_within_the_device_tools_file_limit(dry_run):
    proc, results = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((results / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status == {"imports": "ok", "env": "skipped", "tests_kernels": "ok", "tests_engine": "ok",
                      "kernels": "ok", "engine_decode": "ok"}
    assert "DRY RUN" in proc.stdout and "dry run: no GPU to describe" in proc.stdout
    files = list(results.iterdir())
    assert len(files) <= 8 and all(f.is_file() for f in files)  # what the device tool brings back


def test_dry_run_collects_the_cuda_tests_without_running_them(dry_run):
    summary = json.loads((dry_run[1] / "summary.json").read_text())
    notes = {s["name"]: s["note"] for s in summary["steps"]}
    for step in ("tests_kernels", "tests_engine"):
        assert "collected, not run" in notes[step]
    engine_log = (dry_run[1] / "tests_engine.log").read_text()
    for case in ("tiny-cuda-fp32", "tiny-cuda-bf16", "modelopt-nvfp4-cuda-bf16"):
        assert f"test_prefill_and_decode_logits_match_transformers[{case}]" in engine_log
    assert "test_w4a16_experts_at_ultra_width" in (dry_run[1] / "tests_kernels.log").read_text()


def test_dry_run_times_every_kernel_row_and_the_engine_beside_the_planner(dry_run):
    kernels = json.loads((dry_run[1] / "kernels.json").read_text())
    assert kernels["dry_run"] and len(kernels["rows"]) >= 15
    for row in kernels["rows"]:
        assert row["ours_us"] > 0 and not row["errors"], row
        assert row["target_met"] is None  # a CPU time judges nothing
    assert {"torch._grouped_mm"} <= {r["baseline"] for r in kernels["rows"] if r["baseline_us"]}
    decode = json.loads((dry_run[1] / "engine_decode.json").read_text())
    for row in decode["rows"]:
        assert row["tokens_per_s"] > 0 and row["predicted_tokens_per_s"] > 0 and row["plan_batch"] == row["batch"]
        assert row["experts_touched_measured"] >= 1


def test_dry_run_reaches_vllms_kernels_when_they_are_vendored(dry_run):
    if not (ROOT / "benchmarks" / ".vendor" / "VERSION").exists():
        pytest.skip("vLLM's files are not vendored here (python benchmarks/gpu_prepare.py)")
    rows = json.loads((dry_run[1] / "kernels.json").read_text())["rows"]
    peers = [r for r in rows if r["baseline"] and r["baseline"].startswith("vLLM")]
    assert peers
    for row in peers:  # timed, or stopped inside the kernel by a limit of Triton's interpreter
        assert row["baseline_us"] or any("InterpreterError" in n for n in row["notes"]), row


HANG = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("started", child.pid, flush=True)
time.sleep(60)
"""


def test_a_hanging_step_is_stopped_at_its_timeout_with_what_it_started(tmp_path):
    step = gpu_suite.Step("hang")
    start = time.monotonic()
    gpu_suite.run_step(step, [sys.executable, "-c", HANG], 1.5, tmp_path / "hang.log")
    assert step.status == "timeout" and time.monotonic() - start < 10
    started, child = (tmp_path / "hang.log").read_text().split()
    assert started == "started"
    time.sleep(0.2)
    status = Path(f"/proc/{child}/status")  # the step's own child is gone too (at most a zombie awaiting its reaper)
    assert not status.exists() or "\nState:\tZ" in status.read_text()


def test_a_spent_budget_fails_the_run_instead_of_skipping_quietly(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--dry-run", "--budget", "0",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    status = {s["name"]: s["status"] for s in json.loads((tmp_path / "summary.json").read_text())["steps"]}
    assert status.pop("imports") == "timeout"
    assert set(status.values()) == {"not run"}  # nothing runs once the imports are not known to work


def test_only_runs_the_named_steps(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--dry-run", "--only", "engine_decode",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    status = {s["name"]: s["status"] for s in json.loads((tmp_path / "summary.json").read_text())["steps"]}
    assert status.pop("engine_decode") == "ok" and set(status.values()) == {"skipped"}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["engine_decode.json", "engine_decode.log", "summary.json"]
