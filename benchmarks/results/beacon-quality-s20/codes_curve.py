"""Held-out learning curve of `cpu-s20/codes-focus`: document codes answered, target moved to each place.

    python codes_curve.py      (reads rotate-*.txt here, writes codes-curve.png)

Each rotate-*.txt is one line printed by ``rotate.py`` (24 held-out rag-qa examples, each asked three
times with the target document first, second and third: 72 answers, ratio 4, numbers kept). Step 0 is
the plug-in the run started from (`cpu-s18/keep-numbers` 223).
"""
import ast
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent


def correct(path: Path) -> list[int]:
    return ast.literal_eval(re.search(r"correct by target position: (\[[^\]]*\])", path.read_text()).group(1))


steps = sorted((int(p.stem.split("step")[-1]), correct(p)) for p in HERE.glob("rotate-codes-focus-step*.txt"))
steps.insert(0, (0, correct(HERE / "rotate-keep-numbers-223.txt")))
full = correct(HERE / "rotate-full.txt")
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot([s for s, _ in steps], [sum(c) for _, c in steps], "o-", label="codes-focus (step 0: keep-numbers 223)")
for place, marker in zip(range(3), "v^s"):
    ax.plot([s for s, _ in steps], [3 * c[place] for _, c in steps], marker, alpha=0.4,
            label=f"target document {place + 1} (x3)")
control = sorted((int(p.stem.split("step")[-1]), correct(p)) for p in HERE.glob("rotate-codes-focus-lr2e4-step*.txt"))
ax.plot([0] + [s for s, _ in control], [sum(steps[0][1])] + [sum(c) for _, c in control], "s--", color="tab:purple",
        label="control: the same examples at lr 2e-4 (400 steps)")
ax.axhline(sum(full), color="k", ls="--", label="full context")
ax.axhline(24, color="gray", ls=":", label="chance (1 of 3)")
ax.set_xlabel("training step")
ax.set_ylabel("right answers of 72")
ax.set_title("Held-out document codes at ratio 4 (24 examples x 3 places)")
ax.legend(fontsize=7, loc="lower right")
fig.tight_layout()
fig.savefig(HERE / "codes-curve.png", dpi=120)
print("wrote", HERE / "codes-curve.png")
