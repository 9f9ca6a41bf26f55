"""The example notebooks run top to bottom on the embedded model (executed, not just parsed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Notebooks whose own test executes them and also checks the figures they print.
EXECUTED_ELSEWHERE = {
    "llamaindex_rag.ipynb": "tests/test_notebook_llamaindex.py",
    "benchmarks.ipynb": "tests/test_bench_suite.py",
}
NOTEBOOKS = sorted(p for p in (Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb")
                   if p.name not in EXECUTED_ELSEWHERE)


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_executes(notebook, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--ExecutePreprocessor.timeout=900", "--output-dir", str(tmp_path), str(notebook)],
        capture_output=True, text=True, env={**os.environ, "BEACON_RAG_CACHE_DIR": str(tmp_path / "kv")},
        check=False,  # the assertion below shows the notebook's error instead
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / notebook.name).is_file()
