"""Plot a beacon training log (``log.jsonl``) as a PNG learning curve.

``python -m beacon_rag.bench.training_curve LOG.jsonl OUT.png`` (needs matplotlib: the ``plots`` extra);
``... --compare OUT.png LOG1.jsonl LOG2.jsonl ...`` draws several runs side by side instead: the
held-out gap recovered per task against training tokens, one line per run (how a sweep is read);
runs logged without held-out evals (CPU runs skip them) are compared on moving averages of their
training losses instead, the only trend such logs hold.
Where a run was resumed, a step may appear twice; the later line wins, as it is the one the
resumed run's parameters came from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from beacon_rag.bench.report import _pyplot, _save_figure

SMOOTHING_STEPS = 50
TRAINING_LOSSES = (("lm_loss", "next-token"), ("raw_loss", "raw-token"), ("answer_loss", "answer tokens"))


def _moving_average(values: list[float], width: int) -> list[float]:
    """Trailing mean over up to ``width`` values (shorter at the start, so no step is dropped)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def read_log(path: str | Path) -> dict[int, dict]:
    steps: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            steps[int(row["step"])] = {**steps.get(int(row["step"]), {}), **row}
    return dict(sorted(steps.items()))


def smoothed_losses(rows: dict[int, dict], x: str = "step") -> dict[str, tuple[list[float], list[float]]]:
    """Per training loss the log holds: ``(x values, SMOOTHING_STEPS-step moving average)``.

    Per-step losses swing with each step's task and ratio, so a trend is read from the average;
    a step without a loss (an lm step has no answer) is skipped rather than drawn as zero.
    """
    series = {}
    for key, label in TRAINING_LOSSES:
        kept = [r for r in rows.values() if r.get(key) is not None]
        if kept:
            series[label] = ([r.get(x, 0) for r in kept], _moving_average([r[key] for r in kept], SMOOTHING_STEPS))
    return series


def _gap_lines(ax, xs: list, evals: list[dict], task: str, label: str, **style) -> None:
    """One task's share of the gap recovered, solid, and beside it, dashed in the same colour, the
    answer's own tokens where the log has them (a pass key's digits: the template around them is
    learnt early and would hide whether the digits are). A task an eval did not score is a gap."""
    values = [r["eval_gap_recovered_by_task"].get(task) for r in evals]
    line = ax.plot(xs, [float("nan") if v is None else v for v in values], marker="o", label=label, **style)
    answers = [r.get("eval_answer_gap_recovered_by_task", {}).get(task) for r in evals]
    if any(v is not None for v in answers):
        ax.plot(xs, [float("nan") if v is None else v for v in answers], ls="--", marker=".",
                color=line[0].get_color(), label=f"{label}: answer tokens")


def plot(log: str | Path, out: str | Path) -> Path:
    plt = _pyplot()
    rows = read_log(log)
    evals = [s for s, r in rows.items() if "eval_compressed" in r]
    # Logs written since per-task references were recorded get a third panel: the gap per task.
    gaps = [s for s in evals if rows[s].get("eval_gap_recovered_by_task")]
    fig, axes = plt.subplots(1, 3 if gaps else 2, figsize=(16 if gaps else 11, 4))
    train_ax, eval_ax = axes[0], axes[1]
    steps = [s for s, r in rows.items() if "loss" in r]
    train_ax.plot(steps, [rows[s]["loss"] for s in steps], lw=0.8, label="total")
    train_ax.plot(steps, [rows[s].get("lm_loss", float("nan")) for s in steps], lw=0.8, label="next-token")
    if any("raw_loss" in rows[s] for s in steps):
        train_ax.plot(steps, [rows[s].get("raw_loss", float("nan")) for s in steps], lw=0.8, label="raw-token")
    train_ax.set(title="training loss (per step)", xlabel="step", ylabel="loss")
    train_ax.legend()
    if evals:
        for name, label in [("eval_compressed", "compressed context"), ("eval_full", "full context"),
                            ("eval_none", "no context")]:
            eval_ax.plot(evals, [rows[s][name] for s in evals], marker="o", label=label)
        eval_ax.set(title="held-out target loss (ratio 4)", xlabel="step", ylabel="loss")
    else:
        # A run without held-out evals (they cost minutes on a CPU core) shows its trend instead.
        for label, (xs, ys) in smoothed_losses(rows).items():
            eval_ax.plot(xs, ys, label=label)
        eval_ax.set(title=f"training losses, {SMOOTHING_STEPS}-step moving average", xlabel="step", ylabel="loss")
    eval_ax.legend()
    if gaps:
        gap_ax = axes[2]
        for task in rows[gaps[-1]]["eval_gap_recovered_by_task"]:
            _gap_lines(gap_ax, gaps, [rows[s] for s in gaps], task, task)
        gap_ax.axhline(0, color="grey", lw=0.6)
        gap_ax.set(title="share of the no-context -> full gap recovered", xlabel="step")
        gap_ax.legend()
    fig.tight_layout()
    return _save_figure(plt, fig, Path(out))


def _token_axis(ax: Any) -> None:
    """Training tokens in thousands: full counts (350000, 400000) ran into each other on the axis."""
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value / 1000:g}K"))
    ax.set_xlabel("training tokens")


def compare(logs: list[str | Path], out: str | Path, tasks: tuple[str, ...] | None = None) -> Path:
    """One panel per task: the held-out share of the gap recovered vs training tokens, one line per run.

    Solid: the whole target; dashed, same colour: the answer's own tokens (``_gap_lines``).
    ``tasks`` defaults to every task the logs' evals scored. When no log holds a held-out eval, one
    panel per training loss instead (``_compare_training``).
    """
    # Named by their folder, as every run's output folder holds its log.jsonl.
    runs = [(Path(log).parent.name, read_log(log)) for log in logs]
    if not any(r.get("eval_gap_recovered_by_task") for _, rows in runs for r in rows.values()):
        return _compare_training(runs, out, logs)
    if tasks is None:
        tasks = tuple(dict.fromkeys(task for _, rows in runs for r in rows.values()
                                    for task in r.get("eval_gap_recovered_by_task") or {}))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for name, rows in runs:
        evals = [r for r in rows.values() if r.get("eval_gap_recovered_by_task")]
        tokens = [r.get("tokens", 0) for r in evals]
        for ax, task in zip(axes[0], tasks):
            _gap_lines(ax, tokens, evals, task, name, ms=3)
    for ax, task in zip(axes[0], tasks):
        ax.axhline(0, color="grey", lw=0.6)
        # Untrained starts lie far below zero (-4 for LM); clipping keeps the differences between
        # trained runs, which are what a sweep is about, readable.
        ax.set_ylim(bottom=max(ax.get_ylim()[0], -1.0))
        ax.set(title=f"{task}: share of the no-context -> full gap recovered")
        _token_axis(ax)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_figure(plt, fig, Path(out))


def _compare_training(runs: list[tuple[str, dict[int, dict]]], out: str | Path, logs: list[str | Path]) -> Path:
    """Runs without held-out evals side by side: per training loss, its moving average vs training tokens.

    A list, not a dict by name: two runs in folders of the same name are both drawn."""
    smoothed = [(name, smoothed_losses(rows, x="tokens")) for name, rows in runs]
    labels = [label for _, label in TRAINING_LOSSES if any(label in series for _, series in smoothed)]
    if not labels:
        raise ValueError(f"nothing to compare: no held-out evals and no training losses in {', '.join(map(str, logs))}")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(labels), figsize=(5.5 * len(labels), 4), squeeze=False)
    for ax, label in zip(axes[0], labels):
        for name, series in smoothed:
            if label in series:
                ax.plot(*series[label], label=name)
        ax.set(title=f"{label} loss, {SMOOTHING_STEPS}-step moving average", ylabel="loss")
        _token_axis(ax)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_figure(plt, fig, Path(out))


USAGE = ("usage: python -m beacon_rag.bench.training_curve LOG.jsonl OUT.png\n"
         "       python -m beacon_rag.bench.training_curve --compare OUT.png LOG.jsonl [LOG.jsonl ...]")

if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--compare":
        print(compare(sys.argv[3:], sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1].endswith(".jsonl"):
        print(plot(sys.argv[1], sys.argv[2]))
    else:
        sys.exit(USAGE)
