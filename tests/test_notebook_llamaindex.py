"""The LlamaIndex example notebook runs top to bottom on the embedded model (executed, not just
parsed), and what it prints shows the cache at work: the repeated query and the precomputed FAISS
query compress nothing, and the chat's per-turn prefill stays flat."""

from __future__ import annotations

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
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)  ", text, flags=re.MULTILINE)
    turns = [(int(i), int(r), int(p)) for _, i, r, p in rows]
    assert len(turns) == 6, text
    assert turns[-1][0] > 2 * turns[0][0]  # the history grows...
    assert max(p for _, _, p in turns[1:]) < turns[-1][0] / 2, text  # ...the prefill does not
    flushed = re.search(r"flushed into the cached-history block: (\d+)", text)
    assert flushed and int(flushed.group(1)) > 0, text  # flat even though the FIFO flushed turns
