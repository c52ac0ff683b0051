"""The estimate against public measurements: every anchor of benchmarks/calibration/anchors.yaml in band."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from nemodeploy.plan.calibration import calibration

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "planner_calibration.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("planner_calibration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows(suite):
    return suite.evaluate(suite.load_anchors())


def test_every_anchor_is_within_the_band_and_the_mean_error_under_20_percent(suite, rows):
    outside = [(r.id, r.planned, r.measured) for r in rows if not r.ok]
    assert not outside, f"plan / measured outside {suite.BAND} or not serving: {outside}"
    assert suite.mean_error(rows) < suite.MAX_MEAN_ERROR


def test_every_row_of_the_anchors_page_names_its_source(suite):
    for anchor in suite.load_anchors():
        assert anchor["source"].strip() and anchor["metric"] in suite.METRICS, anchor["id"]


def test_the_error_band_every_plan_prints_is_the_one_a_fresh_run_shows(suite, rows):
    low, high = suite.band(rows)
    recorded = calibration().error_band
    assert recorded[0] <= low + 0.005 and high - 0.005 <= recorded[1], (
        f"data/calibration.yaml says {recorded}, a fresh run gives {low:.2f}-{high:.2f}: update error_band")
    assert recorded[0] >= low - 0.05 and recorded[1] <= high + 0.05, "the recorded band is wider than the data shows"


def test_every_calibration_constant_names_its_source():
    cal = calibration()
    for arch, eff in cal.archs.items():
        assert eff.source.strip(), arch
        assert 0 < eff.weight_stream <= 1 and 0 < eff.cache_stream <= 1 and 0 < eff.prefill_compute <= 1
    for rule in cal.moe_kernels:
        assert rule["source"].strip() and rule["kernel"].strip()


def test_mtp_acceptance_falls_by_draft_position():
    cal = calibration()
    gains = [cal.tokens_per_step(k + 1) - cal.tokens_per_step(k) for k in range(6)]
    assert cal.tokens_per_step(0) == 1.0
    assert all(a > b > 0 for a, b in zip(gains, gains[1:])), "each further draft adds less"
    assert cal.tokens_per_step(5) < 1 + 5 * cal.mtp_acceptance[0], "not one flat acceptance"


def test_every_catalog_architecture_has_efficiencies_and_a_moe_kernel():
    from nemodeploy.topology.catalog import ACCELERATORS

    cal = calibration()
    for accel in ACCELERATORS.values():
        assert accel.arch in cal.archs, accel.kind
        for weights in ("bf16", "fp8", "nvfp4", "fp32"):
            assert cal.moe_kernel(accel.arch, weights, 512).kernel


def test_the_anchor_topologies_written_out_plan_the_same(suite, rows, tmp_path):
    import subprocess

    subprocess.run([sys.executable, str(SCRIPT), "--write-topologies", str(tmp_path)], check=True,
                   capture_output=True)
    from nemodeploy.plan.compiler import compile_plan
    from nemodeploy.topology.loader import load

    for row in rows:
        replanned = compile_plan(load(str(tmp_path / f"{row.id}.yaml")), with_alternatives=False)
        assert suite.METRICS[row.metric](replanned) == row.planned, row.id
