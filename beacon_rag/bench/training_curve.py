"""Plot a beacon training log (``log.jsonl``) as a PNG learning curve.

``python -m beacon_rag.bench.training_curve LOG.jsonl OUT.png`` (needs matplotlib: the ``plots`` extra).
Where a run was resumed, a step may appear twice; the later line wins, as it is the one the
resumed run's parameters came from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_log(path: str | Path) -> dict[int, dict]:
    steps: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            steps[int(row["step"])] = {**steps.get(int(row["step"]), {}), **row}
    return dict(sorted(steps.items()))


def plot(log: str | Path, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log)
    fig, (train_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [s for s, r in rows.items() if "loss" in r]
    train_ax.plot(steps, [rows[s]["loss"] for s in steps], lw=0.8, label="total")
    train_ax.plot(steps, [rows[s].get("lm_loss", float("nan")) for s in steps], lw=0.8, label="next-token")
    train_ax.set(title="training loss (per step)", xlabel="step", ylabel="loss")
    train_ax.legend()
    evals = [s for s, r in rows.items() if "eval_compressed" in r]
    for name, label in [("eval_compressed", "compressed context"), ("eval_full", "full context"),
                        ("eval_none", "no context")]:
        eval_ax.plot(evals, [rows[s][name] for s in evals], marker="o", label=label)
    eval_ax.set(title="held-out target loss (ratio 4)", xlabel="step", ylabel="loss")
    eval_ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(plot(sys.argv[1], sys.argv[2]))
