"""One check's outcome on one node, and the exit code of a whole run.

A check has a severity: `error` (the deployment will fail or hang: exit 1) or `warning` (it will
run, worse: exit 0 unless --strict). When its threshold is crossed its status is `fail` (error) or
`warn` (warning); `ok` when it holds; `skip` when it does not apply or cannot be measured (the
`measured` field says why).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Severity = Literal["error", "warning"]
Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class CheckResult:
    node: str
    name: str
    status: Status
    measured: str
    expected: str
    severity: Severity
    remedy: str = ""  # a command a person can run (empty when ok)

    @property
    def problem(self) -> bool:
        return self.status in ("warn", "fail")

    def to_dict(self) -> dict:
        return asdict(self)


def judge(node: str, name: str, held: bool, measured: str, expected: str, severity: Severity, remedy: str) -> CheckResult:
    """A result from whether the threshold held; the remedy is kept only when it did not."""
    status: Status = "ok" if held else ("fail" if severity == "error" else "warn")
    return CheckResult(node, name, status, measured, expected, severity, "" if held else remedy)


def skipped(node: str, name: str, why: str, severity: Severity = "warning") -> CheckResult:
    return CheckResult(node, name, "skip", why, "", severity)


def exit_code(results: list[CheckResult], strict: bool = False) -> int:
    """1 when an error-severity check failed (or, with strict, when anything warned); else 0."""
    if any(r.status == "fail" for r in results):
        return 1
    if strict and any(r.status == "warn" for r in results):
        return 1
    return 0
