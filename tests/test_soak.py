"""A short soak of the RAM and disk tiers (the few-minute one is `beacon-rag bench soak`)."""

from __future__ import annotations

from beacon_rag.bench.soak import soak


def test_budgets_hold_under_a_random_workload(tmp_path):
    max_entry = 256 << 10
    result = soak(tmp_path / "kv", seconds=12, keys=150, memory_bytes=2 << 20, disk_bytes=6 << 20,
                  min_entry_bytes=8 << 10, max_entry_bytes=max_entry, seed=3)
    assert result["steps"] > 100
    assert result["wrong_entries"] == 0 and result["corrupt_reads"] == 0
    assert result["memory_lru_mismatches"] == 0
    assert result["worst_memory_over_budget"] <= 1.0
    assert result["worst_disk_over_budget"] <= result["disk_slack_allowed"]
    # The workload really exercised eviction in both tiers and hits from both.
    assert result["sources"]["memory"] and result["sources"]["disk"] and result["sources"]["computed"]
    assert result["sources"]["computed"] > result["keys"] * 0.3
    assert result["newest_on_disk_missing"] == 0 and result["newest_on_disk_checked"] >= 5
