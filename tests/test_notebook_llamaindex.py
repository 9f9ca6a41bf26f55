"""The LlamaIndex example notebook runs top to bottom on the embedded model (executed, not just
parsed), and what it prints shows the cache at work: the repeated query and the precomputed FAISS
query compress nothing, and a LlamaIndex ReActAgent with a tool and our memory reads its system prompt
and its growing transcript from the cache, so its per-turn prefill stays flat."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "llamaindex_rag.ipynb"


def _outputs(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return ["".join(out.get("text", "")) for cell in cells if cell["cell_type"] == "code"
            for out in cell.get("outputs", []) if out.get("output_type") == "stream"]


def test_llamaindex_notebook_executes_and_hits_the_cache(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--ExecutePreprocessor.timeout=900", "--output-dir", str(tmp_path), str(NOTEBOOK)],
        check=False, capture_output=True, text=True, env={**os.environ, "BEACON_RAG_CACHE_DIR": str(tmp_path / "kv")},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    text = "\n".join(_outputs(tmp_path / NOTEBOOK.name))
    created = [int(n) for n in re.findall(r"compressed now (\d+)", text)]
    # chained: cold, warm (same question); independent: a question, another one sharing a node;
    # the FAISS query after precompute
    assert len(created) == 5, text
    assert created[0] > 0 and created[1] == 0, text
    assert created[2] > 0 and 0 < created[3] < created[2] and created[4] == 0, text
    stock, agent = _agent_runs(text)
    # The stock ReActAgent: its ~560-token system prompt is computed once, then read from the cache.
    assert [c["turn"] for c in stock if c["call"] == 1] == [1, 2], text
    assert stock[0]["system_source"] == "computed" and stock[0]["system_tokens"] > 400, text
    later = [c for c in stock if c["turn"] > 1]
    assert all(c["system_source"] == "memory" and c["read"] >= stock[0]["system_tokens"] for c in later), text
    # The conversation: four agent turns through ReActAgent, each with at least one LLM call.
    firsts = [c for c in agent if c["call"] == 1]
    assert [c["turn"] for c in firsts] == [1, 2, 3, 4], text
    for previous, turn in itertools.pairwise(firsts):
        assert turn["system_source"] == "memory", text
        # everything the previous turn was sent but its question comes from the cache
        assert turn["read"] >= previous["input"] - 32, text
    assert firsts[-1]["input"] > 2 * firsts[0]["input"], text  # the history grows...
    assert max(c["prefill"] for c in firsts[1:]) < firsts[-1]["input"] / 2, text  # ...the prefill does not
    flushed = re.search(r"flushed into the cached-history block: (\d+)", text)
    assert flushed and int(flushed.group(1)) > 0, text  # flat even though the FIFO flushed turns


AGENT_ROW = re.compile(r"^ *(\d+) +(\d+) +(\d+) +(\d+) +(\d+)  (\d+) (computed|memory|disk) +(\S.*)$",
                       flags=re.MULTILINE)
AGENT_SUMMARY = re.compile(r"^ReActAgent: (\d+) turns, (\d+) LLM calls;", flags=re.MULTILINE)


def _agent_runs(text: str) -> tuple[list[dict], list[dict]]:
    """The per-call rows of the two agent runs (stock prompt, then the conversation), checked against
    the summary line each run prints, which names the class that ran: ReActAgent."""
    summaries = list(AGENT_SUMMARY.finditer(text))
    assert len(summaries) == 2, text
    runs, start = [], 0
    for summary in summaries:
        rows = [{"turn": int(m[1]), "call": int(m[2]), "input": int(m[3]), "read": int(m[4]), "prefill": int(m[5]),
                 "system_tokens": int(m[6]), "system_source": m[7], "step": m[8]}
                for m in AGENT_ROW.finditer(text, start, summary.start())]
        assert rows and len(rows) == int(summary[2]) and max(r["turn"] for r in rows) == int(summary[1]), text
        assert all(r["prefill"] == r["input"] - r["read"] for r in rows), text
        runs.append(rows)
        start = summary.end()
    return runs[0], runs[1]
