"""Same examples, target document moved to each position: accuracy per position.  args: METHOD RATIO KEEP N [SEED]

Run from the repository root (.venv/bin/python benchmarks/results/beacon-quality-s20/rotate.py ARGS).
METHOD: full, shipped (the plug-in the package ships when it runs; the rotate-keep-numbers-223*
files were made while that was keep-numbers 223), untrained, or a plug-in folder. SEED (default 0, the bench's examples) picks other held-out
examples: session 21 chose between checkpoints on seed 1, so that seed 0 stayed a test set.
"""
import sys, re
import torch
from beacon_rag.bench.quality import ENGINE_MEMORY_BYTES, make_examples, build_compressor, answer_correct
from beacon_rag.compressors.exact import ExactCompressor
from beacon_rag.engine import Engine
from beacon_rag.models import load_model
from beacon_rag.segments import Message
torch.set_num_threads(1)
lm = load_model()
method, ratio, keep, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
ex = make_examples("rag-qa", lm, n, 512, seed=seed)
comp = ExactCompressor() if method == "full" else build_compressor("beacon", ratio, lm=lm, plugin=None if method == "shipped" else method, keep=keep)
eng = Engine(lm, compressor=comp, persist=False, memory_bytes=ENGINE_MEMORY_BYTES)
score = [0, 0, 0]
picks = [[0, 0, 0, 0] for _ in range(3)]
for e in ex:
    blocks = e.messages[-1].content
    idx = [i for i, b in enumerate(blocks) if getattr(b, "document", False)]
    docs = [blocks[i] for i in idx]
    t = next(k for k, b in enumerate(docs) if e.answer in re.findall(r"\d+", b.text))
    others = [d for k, d in enumerate(docs) if k != t]
    for p in range(3):
        order = others[:p] + [docs[t]] + others[p:]
        new = list(blocks)
        for i, d in zip(idx, order):
            new[i] = d
        msgs = [*e.messages[:-1], Message("user", new)]
        out = eng.generate(msgs, max_new_tokens=16).text
        score[p] += answer_correct(out, e.answer)
        codes = [re.search(r"access code for .*? is (\d+)", d.text).group(1) for d in order]
        runs = re.findall(r"\d+", out)
        picks[p][1 + codes.index(runs[0]) if runs and runs[0] in codes else 0] += 1
print(sys.argv[1:], "correct by target position:", score, "of", n, "| picks (none,0,1,2) per target position:", picks, flush=True)
