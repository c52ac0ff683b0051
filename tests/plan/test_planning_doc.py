"""docs/planning.md shows what the planner computes: its tables equal a fresh run of the command it names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_tables_of_planning_md_are_a_fresh_plan():
    spec = importlib.util.spec_from_file_location("planning_tables", ROOT / "benchmarks" / "planning_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    doc = (ROOT / "docs" / "planning.md").read_text()
    assert "python benchmarks/planning_tables.py" in doc
    for table in module.tables():
        for line in table.splitlines():
            assert line in doc, f"docs/planning.md is stale (rerun benchmarks/planning_tables.py): {line}"
