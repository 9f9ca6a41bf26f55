"""Which document's code does each answer pick?  args: METHOD(full|untrained|PLUGIN) RATIO KEEP PLACEMENT N OUT

Run from the repository root (.venv/bin/python benchmarks/results/beacon-quality-s20/which_doc2.py ARGS).
METHOD: full, shipped (the plug-in the package ships when it runs; the rotate-keep-numbers-223*
files were made while that was keep-numbers 223), untrained, or a plug-in folder.
"""
import sys, re, json
from collections import Counter
import torch
from beacon_rag.bench.quality import ENGINE_MEMORY_BYTES, make_examples, build_compressor
from beacon_rag.compressors.exact import ExactCompressor
from beacon_rag.engine import Engine
from beacon_rag.models import load_model
torch.set_num_threads(1)
lm = load_model()
method, ratio, keep, placement, n, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
ex = make_examples("rag-qa", lm, n, 512, seed=0)
comp = ExactCompressor() if method == "full" else build_compressor("beacon", ratio, lm=lm, plugin=None if method == "shipped" else method, keep=keep)
eng = Engine(lm, compressor=comp, persist=False, memory_bytes=ENGINE_MEMORY_BYTES, placement=placement)
rows = []
for e in ex:
    docs = [b.text for b in e.messages[-1].content if getattr(b, "document", False)]
    codes = [re.search(r"access code for .*? is (\d+)", d).group(1) for d in docs]
    out = eng.generate(e.messages, max_new_tokens=16).text
    runs = re.findall(r"\d+", out)
    rows.append(dict(target=codes.index(e.answer), pick=codes.index(runs[0]) if runs and runs[0] in codes else -1, out=out))
json.dump(rows, open(out_path, "w"), indent=1)
c = Counter((r["target"], r["pick"]) for r in rows)
print(sys.argv[1:], "correct", sum(r["target"] == r["pick"] for r in rows), "of", n)
for t in range(3):
    print("  target", t, "picks (none,0,1,2):", [c[(t, p)] for p in (-1, 0, 1, 2)])
