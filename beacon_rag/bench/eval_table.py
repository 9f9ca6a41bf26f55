"""Tabulate trainer evals (``beacon-rag train --eval-only ... > EVAL.json``) as one Markdown table.

``python -m beacon_rag.bench.eval_table [--references] LABEL=EVAL.json [LABEL=EVAL.json ...]``

One row per plug-in label and ratio (evals of one plug-in on different ``--eval-tasks`` with the
same label and ratio share a row): its ratio, the share of the LM gap recovered, and per QA task the answer tokens'
loss / greedy token accuracy / exact answers ("2 of 8"). ``--references`` adds the full-context and
no-context rows, which the trainer scores on the same held-out examples for every plug-in. Every
session since the third wrote this table by hand or with a throwaway script; this is that script.

Evals of different held-out examples (another seed, context length or example count) would put
figures side by side that do not compare, so they are refused rather than tabulated.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from beacon_rag.bench.report import markdown_table

# Where two evals' full-context losses for one task differ by more than this, they scored other examples.
SAME_EXAMPLES_TOLERANCE = 1e-4


def read_eval(path: str | Path) -> dict[str, Any]:
    """One ``--eval-only`` JSON, checked to be one (a training log line or a bench result is not)."""
    try:
        result = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON ({error}); expected the output of `beacon-rag train --eval-only`") from None
    if not isinstance(result, dict) or not {"eval_ratio", "eval_full_by_task", "eval_answer_by_task"} <= set(result):
        raise ValueError(f"{path} is not a trainer eval: it lacks eval_ratio / eval_full_by_task / eval_answer_by_task "
                         "(expected the output of `beacon-rag train --eval-only`)")
    return result


def _cell(result: dict[str, Any], task: str, condition: str = "", counts: dict[str, int] | None = None) -> str:
    """answer loss / token accuracy / exact answers, for the compressed ("") or a reference condition.

    ``counts``: examples per task, known from any eval of the same examples (older evals lack them).
    """
    loss = result[f"eval_answer{condition}_by_task"].get(task)
    if loss is None:
        return ""
    accuracy = result.get(f"eval_answer_token_accuracy{condition}_by_task", {}).get(task)
    exact = result.get(f"eval_answer_exact{condition}_by_task", {}).get(task)
    if accuracy is None or exact is None:
        return f"{loss:.2f} / - / -"  # an eval from before accuracies were recorded: its loss alone
    count = result.get("eval_examples_by_task", {}).get(task) or (counts or {}).get(task)
    # Where no eval of these examples recorded the count, the share; a count reads better when known.
    exact_text = f"{round(exact * count)} of {count}" if count else f"{exact:.2f}"
    return f"{loss:.2f} / {accuracy:.2f} / {exact_text}"


def _check_same_examples(evals: list[tuple[str, dict[str, Any]]]) -> None:
    first: dict[str, tuple[str, float]] = {}
    for label, result in evals:
        # The full-context target loss per task (lm included) depends only on the examples.
        for task, full in result["eval_full_by_task"].items():
            seen = first.setdefault(task, (label, full))
            if not math.isclose(seen[1], full, rel_tol=SAME_EXAMPLES_TOLERANCE, abs_tol=SAME_EXAMPLES_TOLERANCE):
                raise ValueError(f"{seen[0]} and {label} scored different held-out {task} examples (full-context "
                                 f"target loss {seen[1]:.4f} vs {full:.4f}): evaluate both with the same --seed, "
                                 "--eval-examples and --eval-context-tokens")


def _merge_rows(evals: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """One eval per (label, ratio): a plug-in scored on task subsets (how evals are split across
    cores) is one row. A task scored twice under one label and ratio is refused: which is the row's?"""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for label, result in evals:
        row = merged.setdefault((label, result["eval_ratio"]), {})
        for key, value in result.items():
            if not key.endswith("_by_task"):
                row.setdefault(key, value)
                continue
            tasks = row.setdefault(key, {})
            twice = [task for task in value if task in tasks and key == "eval_answer_by_task"]
            if twice:
                raise ValueError(f"{label} at ratio {result['eval_ratio']} has two evals of {', '.join(twice)}: "
                                 "give them different labels")
            tasks.update(value)
    return [(label, result) for (label, _), result in merged.items()]


def table(evals: list[tuple[str, dict[str, Any]]], references: bool = False) -> str:
    """The Markdown table for ``(label, eval)`` pairs; QA tasks in the order the evals first name them."""
    if not evals:
        raise ValueError("no evals to tabulate")
    _check_same_examples(evals)
    evals = _merge_rows(evals)
    tasks = list(dict.fromkeys(task for _, result in evals for task in result["eval_answer_by_task"]))
    header = ["plug-in", "ratio", "lm gap", *tasks]
    # The examples are the same in every eval (checked above), so one eval's counts serve all.
    counts = {task: n for _, result in evals for task, n in result.get("eval_examples_by_task", {}).items()}
    rows = []
    for label, result in evals:
        gap = result.get("eval_gap_recovered_by_task", {}).get("lm")
        rows.append([label, str(result["eval_ratio"]), "" if gap is None else f"{gap:.2f}",
                     *(_cell(result, task, counts=counts) for task in tasks)])
    if references:
        for name, condition in (("full context", "_full"), ("no context", "_none")):
            # Each task's reference from the first eval that scored it: they agree (checked above).
            cells = [next(_cell(r, task, condition, counts) for _, r in evals if task in r["eval_answer_by_task"])
                     for task in tasks]
            rows.append([name, "", "", *cells])
    return "\n".join(markdown_table(header, rows))


USAGE = "usage: python -m beacon_rag.bench.eval_table [--references] LABEL=EVAL.json [LABEL=EVAL.json ...]"


def main(argv: list[str]) -> int:
    references = "--references" in argv
    pairs = [arg for arg in argv if arg != "--references"]
    if not pairs or any("=" not in arg or arg.startswith("-") for arg in pairs):
        print(USAGE, file=sys.stderr)
        return 1
    try:
        evals = [(label, read_eval(path)) for label, path in (arg.split("=", 1) for arg in pairs)]
        print(table(evals, references=references))
    except (OSError, ValueError) as error:
        print(f"eval_table: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
