"""dashboards/prometheus/alerts.yml: `promtool check rules` and `promtool test rules` (its unit tests in
alerts_test.yml, one firing and one quiet case per rule) on Debian's real Prometheus package, and the
thresholds it uses are the Python rules' (compactobs.rules, report anomalies' Thresholds)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from compactobs.reports import promql
from compactobs.reports.anomalies import Thresholds
from compactobs.rules import SpikeRule

RULES = Path(__file__).resolve().parents[2] / "dashboards" / "prometheus"
PROMTOOL = shutil.which("promtool")
if PROMTOOL is None:
    if os.environ.get("CI"):
        raise RuntimeError("promtool is not installed: .ci/run installs Debian's prometheus package")
    pytest.skip("Debian's prometheus package (promtool) is not installed", allow_module_level=True)


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_are_valid_prometheus_rules() -> None:
    assert "SUCCESS: 3 rules found" in promtool("check", "rules", "alerts.yml")


def test_the_rules_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def _expression(name: str) -> str:
    text = (RULES / "alerts.yml").read_text(encoding="utf-8")
    found = re.search(rf"- alert: {name}\n\s+expr: \|\n((?:\s{{10}}.*\n)+)", text)
    assert found is not None, name
    return " ".join(found.group(1).split())


def test_the_thresholds_are_the_python_rules() -> None:
    spike, thresholds = SpikeRule(), Thresholds()
    cost, calls = promql.COST, f"{promql.DURATION}_count"
    assert _expression("CompactobsSpendSpike") == (
        f"sum by (job) (increase({cost}[{spike.window_hours}h])) > {spike.factor:g} * sum by (job) "
        f"(increase({cost}[{spike.baseline_hours}h] offset {spike.window_hours}h)) / {spike.baseline_hours} "
        f"and sum by (job) (increase({cost}[{spike.window_hours}h])) >= {spike.min_usd} "
        f"and sum by (job) (increase({cost}[{spike.baseline_hours}h] offset {spike.window_hours}h)) > 0"
    )
    by = f"sum by (job, {promql.MODEL})"
    assert _expression("CompactobsCompactionRate") == (
        f"{by} (increase({promql.COMPACTIONS}[15m])) / {by} (increase({calls}[15m])) "
        f">= {thresholds.loop_min / thresholds.loop_window:g} "
        f"and {by} (increase({calls}[15m])) >= {thresholds.loop_window}"
    )
    assert _expression("CompactobsErrorBurst") == (
        f'sum by (job) (increase({calls}{{{promql.ERROR_TYPE}=~"429|529|5[0-9][0-9]"}}[1h])) '
        f"> {thresholds.error_share:g} * sum by (job) (increase({calls}[1h])) "
        f"and sum by (job) (increase({calls}[1h])) >= {thresholds.error_min_calls}"
    )
