"""The GPU suite (issue 19): every CUDA check and benchmark in one time-bounded run; see gpu_suite.sh.

Steps, each a subprocess with its own timeout, all inside one overall budget (--budget seconds),
so a hang costs its step, never the run:

  imports        import every module the later steps use; list the distributions they come from
  env            the GPU, its driver, torch and triton (nvidia-smi, torch.cuda)
  tests_kernels  pytest tests/kernels, the GPU-only tests at Ultra widths included
  tests_engine   the engine against transformers on CUDA in fp32 and bf16, from the tiny checkpoint
                 and a ModelOpt NVFP4 one (tests/benchmarks/test_engine_fidelity_by_device.py), plus
                 the loading tests tests/engine/test_*nvfp4*, *modelopt*, *quant* when they exist
  kernels        benchmarks/kernels.py: each kernel beside its peer and the roofline, one run
  engine_decode  benchmarks/engine_decode.py: tokens/s of an Ultra-width slice beside the planner

--dry-run (no GPU): imports and the two benchmarks run on CPU at tiny widths, the pytest steps
only collect their tests, env is skipped; each skip says so in one line.

RESULTS_DIR receives at most 8 files, what the device tool brings back: tests_kernels.log,
tests_engine.log, kernels.log, kernels.json, engine_decode.log, engine_decode.json and
summary.json (every step's status, time and note; the targets; the fidelity errors). The same
summary is printed at the end. Exit status 1 when a step failed or timed out, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIDELITY_TESTS = "tests/benchmarks/test_engine_fidelity_by_device.py"
LOADING_TEST_GLOBS = ("test_*nvfp4*.py", "test_*modelopt*.py", "test_*quant*.py")
# Distributions the GPU machine is known to lack: the suite must not need them (issue 19)
ABSENT_ON_GPU = {"fastapi", "uvicorn", "starlette", "ray", "vllm"}
IMPORTS = [  # the modules the steps import, besides pytest's own
    "torch", "triton", "transformers", "safetensors", "pydantic", "yaml", "psutil",
    "nemodeploy.engine.kernels.triton_ops", "nemodeploy.engine.kernels.triton_nvfp4", "nemodeploy.engine.loader",
    "nemodeploy.plan.compiler", "benchmarks.kernels", "benchmarks.engine_decode", "pytest", "pytest_timeout",
]
BUDGET_S = 450  # the whole suite: under the 8 minutes of one device command, with room for start-up
# seconds each step may take on one H200 (the budget caps the sum)
TIMEOUTS = dict(imports=60, env=30, tests_kernels=120, tests_engine=90, kernels=180, engine_decode=150)


@dataclass
class Step:
    name: str
    status: str = "not run"  # ok | failed | timeout | skipped | not run
    seconds: float = 0.0
    note: str = ""
    details: dict = field(default_factory=dict)


def run_step(step: Step, cmd: list[str], timeout: float, log: Path | None) -> str:
    """Run cmd under timeout; its output goes to `log` (and is returned). Sets status and seconds."""
    start = time.monotonic()
    if timeout < 1:
        step.status, step.note = "timeout", "not started: the suite's time budget was spent"
        return ""
    # its own process group, so that a timeout ends whatever the step started, not only its first process
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        step.status = "ok" if proc.returncode == 0 else "failed"
        if proc.returncode:
            step.note = f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        step.status, step.note = "timeout", f"stopped after {timeout:.0f} s"
    step.seconds = round(time.monotonic() - start, 1)
    if log:
        log.write_text(output)
    print(f"  {step.name}: {step.status} in {step.seconds:.0f} s {step.note}".rstrip(), flush=True)
    return output


IMPORT_CHECK = """
import importlib, importlib.metadata as md, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
owners = md.packages_distributions()
dists = sorted({d for mod in list(sys.modules) for d in owners.get(mod.split('.')[0], [])})
print(json.dumps(dists))
"""


def step_imports(step: Step, args) -> None:
    out = run_step(step, [sys.executable, "-c", IMPORT_CHECK, *IMPORTS], args.timeout("imports"), None)
    if step.status != "ok":
        step.note = (out.strip().splitlines() or [step.note])[-1][:300]
        return
    dists = json.loads(out.strip().splitlines()[-1])
    step.details["distributions"] = dists
    absent = sorted(ABSENT_ON_GPU & {d.lower() for d in dists})
    if absent:
        step.status, step.note = "failed", f"needs {', '.join(absent)}, which the GPU machine lacks"
    else:
        step.note = f"{len(dists)} distributions, none of {', '.join(sorted(ABSENT_ON_GPU))}"


ENV_CHECK = """
import json, torch, triton
print(json.dumps(dict(gpu=torch.cuda.get_device_name(), capability=torch.cuda.get_device_capability(),
                      memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
                      torch=torch.__version__, cuda=torch.version.cuda, triton=triton.__version__)))
"""


def step_env(step: Step, args) -> None:
    if args.dry_run:
        step.status, step.note = "skipped", "dry run: no GPU to describe"
        return
    out = run_step(step, [sys.executable, "-c", ENV_CHECK], args.timeout("env"), None)
    if step.status == "ok":
        step.details = json.loads(out.strip().splitlines()[-1])
        query = ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem", "--format=csv,noheader"]
        try:
            step.details["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            step.details["nvidia_smi"] = f"unavailable: {exc!r}"
        step.note = f"{step.details['gpu']}, torch {step.details['torch']}, triton {step.details['triton']}"


def _pytest_counts(output: str) -> str:
    last = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error|skipped|tests? collected)", line)]
    return last[-1].strip("= ") if last else ""


def step_pytest(step: Step, args, paths: list[str]) -> None:
    # not the multi-host tests: they need root, network namespaces and Ray, none of which the GPU machine has
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", "-m", "not netns", *paths]
    cmd += ["--collect-only"] if args.dry_run else ["-s", "--timeout", "90"]
    out = run_step(step, cmd, args.timeout(step.name), args.results / f"{step.name}.log")
    counts = _pytest_counts(out)
    collected = args.dry_run and step.status == "ok"
    step.note = "; ".join(filter(None, [step.note, counts, "dry run: collected, not run" if collected else ""]))
    step.details["fidelity"] = re.findall(r"^fidelity .*$", out, flags=re.M)


def step_benchmark(step: Step, args, script: str) -> None:
    result = args.results / f"{step.name}.json"
    result.unlink(missing_ok=True)  # never read an earlier run's figures as this one's
    cmd = [sys.executable, script, "--json", str(result)] + (["--dry-run"] if args.dry_run else [])
    out = run_step(step, cmd, args.timeout(step.name), args.results / f"{step.name}.log")
    if step.status == "failed":
        step.note += ": " + (out.strip().splitlines() or [""])[-1][:200]
    try:  # written after every row: a step stopped by its timeout still has what it measured
        step.details = json.loads(result.read_text()) if result.exists() else {}
    except json.JSONDecodeError:
        step.note += "; its JSON was cut off mid-write"
    rows = step.details.get("rows", [])
    judged = [r["target_met"] for r in rows if r["target_met"] is not None]
    step.note = "; ".join(filter(None, [step.note, f"{len(rows)} rows" + (
        f", targets met {sum(judged)} of {len(judged)}" if judged else "")]))


def targets(steps: dict[str, Step]) -> list[dict]:
    """Every row with a target, from both benchmarks: what was measured against what."""
    out = []
    for row in steps["kernels"].details.get("rows", []):
        if row.get("target"):
            value = f"{row['copy_share']:.0%} of copy" if "copy" in row["target"] and row["copy_share"] is not None else (
                f"{row['vs_baseline']:.2f}x {row['baseline']}" if row["vs_baseline"] is not None else "no ratio")
            out.append(dict(what=f"{row['kernel']} {row['shape']}", measured=value, target=row["target"],
                            met=row["target_met"], errors=row["errors"] + row["notes"]))
    for row in steps["engine_decode"].details.get("rows", []):
        out.append(dict(what=f"engine decode B={row['batch']}",
                        measured=f"{row['tokens_per_s']:.0f} tok/s = {row['ratio']:.2f} x planner {row['predicted_tokens_per_s']:.0f}",
                        target=f">={row['target']:.0%} of the planner's prediction", met=row["target_met"], errors=[]))
    return out


def print_summary(summary: dict) -> None:
    mode = " (DRY RUN: code paths only, no figure means anything)" if summary["dry_run"] else ""
    print(f"\nGPU suite summary{mode}: {summary['results']}")
    for s in summary["steps"]:
        print(f"  {s['name']:14} {s['status']:8} {s['seconds']:6.0f} s  {s['note']}")
    for line in summary["fidelity"]:
        print(f"  {line}")
    if summary["targets"]:
        print("targets:")
    verdict = {True: "met", False: "NOT met", None: "not judged"}
    for t in summary["targets"]:
        errors = f"  [{'; '.join(t['errors'])}]" if t["errors"] else ""
        print(f"  {t['what']:42} {t['measured']:44} {t['target']:34} {verdict[t['met']]}{errors}")


def main() -> int:
    parser = argparse.ArgumentParser(description="nemodeploy GPU suite (issue 19)")
    parser.add_argument("results", type=Path, help="folder for the logs and JSON (created)")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: every step's code on CPU at tiny sizes")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole suite (default {BUDGET_S})")
    parser.add_argument("--only", type=lambda text: text.split(","), metavar="STEP[,STEP...]",
                        help=f"run only these steps, of {','.join(TIMEOUTS)}")
    args = parser.parse_args()
    unknown = sorted(set(args.only or ()) - set(TIMEOUTS))
    if unknown:
        parser.error(f"unknown steps {', '.join(unknown)}; the steps are {', '.join(TIMEOUTS)}")
    try:
        args.results.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"gpu_suite: cannot create {args.results}: {exc.strerror}", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.budget
    args.timeout = lambda name: min(TIMEOUTS[name], deadline - time.monotonic())
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_suite: no CUDA GPU here; use --dry-run to check the suite on CPU", file=sys.stderr)
            return 2
    engine_tests = [FIDELITY_TESTS] + sorted(str(p.relative_to(ROOT)) for g in LOADING_TEST_GLOBS
                                             for p in (ROOT / "tests" / "engine").glob(g))
    steps = {name: Step(name) for name in TIMEOUTS}
    actions = dict(
        imports=lambda s: step_imports(s, args),
        env=lambda s: step_env(s, args),
        tests_kernels=lambda s: step_pytest(s, args, ["tests/kernels"]),
        tests_engine=lambda s: step_pytest(s, args, engine_tests),
        kernels=lambda s: step_benchmark(s, args, "benchmarks/kernels.py"),
        engine_decode=lambda s: step_benchmark(s, args, "benchmarks/engine_decode.py"),
    )
    print(f"GPU suite{' (dry run)' if args.dry_run else ''}: {len(actions)} steps, budget {args.budget:.0f} s", flush=True)
    for name, action in actions.items():
        if args.only and name not in args.only:
            steps[name].status, steps[name].note = "skipped", "not in --only"
            continue
        action(steps[name])
        if name == "imports" and steps[name].status in ("failed", "timeout"):
            break  # every later step would fail the same way
    summary = dict(
        results=str(args.results), dry_run=args.dry_run, budget_s=args.budget,
        steps=[asdict(s) for s in steps.values()],
        fidelity=steps["tests_engine"].details.get("fidelity", []), targets=targets(steps),
    )
    (args.results / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    return 1 if any(s.status in ("failed", "timeout") for s in steps.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
