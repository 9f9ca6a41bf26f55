"""The benchmark suite end to end on the embedded model (small setting), its report and its notebook.

What can fail here: the one command (``benchmarks/run_all.sh --small``) must produce every JSON,
plot and the markdown section; the figures must be consistent with what they claim to measure
(exact reuse gives plain transformers' first token; beacon stores about 1/R of the exact bytes;
hit rates equal the ones implied by the query stream; the 1 GB tier count is the tier's own
accounting); the README is changed only between its markers; the notebook executes on the JSON.
No wall-clock figure is asserted (the machine is shared), only that each was measured.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from beacon_rag.bench import report, throughput
from beacon_rag.bench.memory_bench import documents_in_tier
from beacon_rag.store.codec import Entry

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> tuple[Path, dict]:
    results = tmp_path_factory.mktemp("bench-small")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "BEACON_RAG_CACHE_DIR": str(results / "kv")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "run_all.sh"), "--small", "--results", str(results)],
                          check=False, capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return results, report.load_results(results)


def test_one_command_writes_every_artifact(suite):
    results, loaded = suite
    for name in ("scaling", "memory", "throughput", "run_all"):
        assert name in loaded, f"{name}.json missing"
        assert loaded[name]["setting"] == "small"
    assert loaded["run_all"]["duration_s"] > 0
    for plot in ("ttft_vs_context", "ttft_vs_documents", "memory", "throughput"):
        path = results / "plots" / f"{plot}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC, plot
    section = (results / "results.md").read_text()
    assert "Headlines" in section and loaded["scaling"]["model"] in section
    assert report.README_START not in section  # the markers belong to the README, not the section


def test_scaling_figures_are_consistent(suite):
    _, loaded = suite
    scaling = loaded["scaling"]
    assert scaling["configs"] == ["exact", "beacon-r2", "beacon-r4", "beacon-r8", "beacon-r16"]
    full = scaling["full_kv_bytes_per_token"]
    for curve in ("context", "documents"):
        rows = scaling["curves"][curve]
        assert len(rows) >= 2
        assert [r["context_tokens"] for r in rows] == sorted(r["context_tokens"] for r in rows)
        for row in rows:
            assert row["prompt_reuse_same_first_token"], "transformers prompt reuse must be exact"
            for key in ("full_prefill_s", "question_only_s", "prompt_reuse_s", "prompt_reuse_prefill_s"):
                assert row[key] > 0
            exact = row["configs"]["exact"]
            assert exact["first_token_matches_full"], "exact reuse must give plain transformers' first token"
            assert exact["kv_bytes_per_token"] == full and exact["slots"] == row["context_tokens"]
            previous = full
            for ratio in scaling["ratios"]:
                cfg = row["configs"][f"beacon-r{ratio}"]
                assert all(cfg[k] > 0 for k in ("cold_s", "warm_ram_s", "warm_disk_s"))
                # ceil(tokens / R) slots per segment: at most one extra slot per segment over tokens / R
                assert full / ratio <= cfg["kv_bytes_per_token"] < previous
                previous = cfg["kv_bytes_per_token"]


def _expected_hit_rates(stream: list[tuple[list[int], int]]) -> tuple[float, float]:
    """Document hit rates the stream implies: any-order reuse vs prefix (chained) reuse."""
    seen, prefixes = set(), set()
    independent = chained = asked = 0
    for docs, _ in stream:
        for i, doc in enumerate(docs):
            asked += 1
            independent += doc in seen
            chained += tuple(docs[: i + 1]) in prefixes
        seen.update(docs)
        prefixes.update(tuple(docs[: i + 1]) for i in range(len(docs)))
    return independent / asked, chained / asked


def test_throughput_hit_rates_match_the_stream(suite):
    _, loaded = suite
    tp = loaded["throughput"]
    stream = throughput.zipf_stream(tp["corpus_documents"], tp["queries"], tp["docs_per_query"], tp["zipf_s"],
                                    tp["seed"])
    independent, chained = _expected_hit_rates(stream)
    by = {r["config"]: r for r in tp["configs"]}
    assert by["plain"]["document_hit_rate"] == 0 and by["plain"]["token_hit_rate"] == 0
    assert by["exact"]["document_hit_rate"] == pytest.approx(chained)
    assert by["exact-independent"]["document_hit_rate"] == pytest.approx(independent)
    assert by["beacon-r8-independent"]["document_hit_rate"] == pytest.approx(independent)
    for row in tp["configs"]:
        assert len(row["ttft_s"]) == tp["queries"] and row["qps"] > 0
        assert row["ttft_p50_s"] <= row["ttft_p95_s"] <= max(row["ttft_s"])


def test_memory_figures_are_consistent(suite):
    _, loaded = suite
    mem = loaded["memory"]
    by = {r["config"]: r for r in mem["configs"]}
    assert set(by) == {"plain", "prompt-reuse", "exact", "beacon-r2", "beacon-r4", "beacon-r8", "beacon-r16"}
    assert by["exact"]["kv_bytes_per_token"] == mem["full_kv_bytes_per_token"]
    for name in ("exact", "beacon-r2", "beacon-r4", "beacon-r8", "beacon-r16"):
        row = by[name]
        # the tier's own count equals the budget arithmetic for equal entries
        assert row["documents_in_1gb_ram_tier"] == mem["ram_tier_bytes"] // row["tier_entry_bytes"]
        assert row["tier_entry_bytes"] >= row["ram_bytes_per_document"]
        # the disk entry is the tensors plus a header, never less
        assert row["ram_bytes_per_document"] < row["disk_bytes_per_document"] < 1.05 * row["ram_bytes_per_document"]
        assert row["peak_rss_bytes"] >= row["rss_before_bytes"] > 0
    assert by["beacon-r16"]["documents_in_1gb_ram_tier"] > by["exact"]["documents_in_1gb_ram_tier"]


def test_notebook_executes_on_the_suite_results(suite, tmp_path):
    results, _ = suite
    notebook = ROOT / "notebooks" / "benchmarks.ipynb"
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--ExecutePreprocessor.timeout=600", "--output-dir", str(tmp_path), str(notebook)],
        check=False, capture_output=True, text=True, env={**os.environ, report.RESULTS_ENV: str(results)},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    executed = json.loads((tmp_path / notebook.name).read_text())
    outputs = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4


def test_readme_changes_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    before, after = "# title\n\nintro\n\n## Results\n", "\n## Layout\nkeep me\n"
    readme.write_text(f"{before}{report.README_START}\nold table\n{report.README_END}{after}")
    assert report.update_readme(readme, "new table\n")
    assert readme.read_text() == f"{before}{report.README_START}\nnew table\n{report.README_END}{after}"
    untouched = tmp_path / "OTHER.md"
    untouched.write_text("no markers here\n")
    assert not report.update_readme(untouched, "x\n")
    assert untouched.read_text() == "no markers here\n"


def test_zipf_stream_is_reproducible_and_skewed():
    a = throughput.zipf_stream(32, 400, 3, 1.1, seed=7)
    assert a == throughput.zipf_stream(32, 400, 3, 1.1, seed=7)
    assert a != throughput.zipf_stream(32, 400, 3, 1.1, seed=8)
    assert all(len(set(d)) == 3 and d == sorted(d) for d, _ in a)
    counts = [sum(doc in d for d, _ in a) for doc in range(32)]
    assert counts[0] > 3 * counts[-1]  # rank 1 far more popular than rank 32
    with pytest.raises(ValueError, match="docs per query"):
        throughput.zipf_stream(2, 1, 3, 1.1, seed=0)
    with pytest.raises(ValueError, match="Zipf exponent"):
        throughput.zipf_stream(4, 1, 1, 0.0, seed=0)


def test_percentile_matches_numpy():
    np = pytest.importorskip("numpy")
    values = [0.3, 0.1, 0.9, 0.4, 0.2, 0.7, 0.5]
    for q in (0, 50, 95, 100):
        assert math.isclose(throughput.percentile(values, q), float(np.percentile(values, q)))


def test_documents_in_tier_counts_a_real_tier():
    entry = Entry({"k": torch.zeros(25, dtype=torch.float32)})  # 100 bytes
    assert documents_in_tier(entry, 1000) == 10
    assert documents_in_tier(entry, 99) == 0


def test_markdown_table_has_one_cell_per_column_and_a_separator() -> None:
    lines = report.markdown_table(["method", "loss"], [["beacon:4", "1.757"], ["knorm:4", "1.749"]])
    assert lines == ["| method | loss |", "|---|---|", "| beacon:4 | 1.757 |", "| knorm:4 | 1.749 |"]
    assert report.markdown_table(["a"], []) == ["| a |", "|---|"]  # a header alone is still a table
