"""scripts/transition_stats.py: Wilson intervals and Fisher p against `replace` in a merged transitions file."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("transition_stats", ROOT / "scripts" / "transition_stats.py")
transition_stats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(transition_stats)


def row(policy: str, latency: float, wins: int, n: int = 20, threshold=None) -> dict:
    return {"policy": policy, "virtual_latency_ms": latency, "threshold": threshold,
            "successes": [i < wins for i in range(n)], "success_rate": wins / n}


def test_p_against_the_replace_row_of_the_same_policy_latency_and_threshold():
    rows = {"a/replace": row("p", 70.0, 15), "a/rtc_soft:3": row("p", 70.0, 5),
            "b/rtc_soft:3": row("p", 190.0, 5),  # no replace at 190 ms
            "c/replace": row("p", 70.0, 5, threshold=10), "c/rtc_soft:3": row("p", 70.0, 5, threshold=10),
            "a/offline (evaluate_policy)": {"success_rate": 0.5}}
    out = transition_stats.add_statistics(rows)
    assert out["a/rtc_soft:3"]["fisher_p_vs_replace"] == pytest.approx(0.0038475, abs=1e-7)  # scipy's value
    assert out["c/rtc_soft:3"]["fisher_p_vs_replace"] == 1.0
    assert "fisher_p_vs_replace" not in out["b/rtc_soft:3"] and "fisher_p_vs_replace" not in out["a/replace"]
    assert out["a/replace"]["n_successes"] == 15 and out["a/replace"]["success_wilson95"][0] == pytest.approx(
        0.5313, abs=1e-4)
    assert "n_episodes" not in out["a/offline (evaluate_policy)"]


def test_the_docs_file_already_holds_its_statistics():
    rows = json.loads((ROOT / "docs" / "transitions_virtual.json").read_text())
    assert transition_stats.add_statistics(copy.deepcopy(rows)) == rows
    assert rows["m1/rtc_inpaint"]["fisher_p_vs_replace"] == pytest.approx(0.478, abs=5e-4)
