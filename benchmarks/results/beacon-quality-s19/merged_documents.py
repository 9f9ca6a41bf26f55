"""Diagnostic: rag-qa with each document its own segment (the engine's layout) vs all documents in one block.

    .venv/bin/python merged_documents.py PLUGIN_DIR N     (prints correct answers of N at ratios 4 and 8)

Same held-out examples as ``bench quality --task rag-qa`` (seed 0, 512 context tokens), numbers kept.
"""
import sys

import torch

from beacon_rag.bench.quality import ENGINE_MEMORY_BYTES, answer_correct, make_examples
from beacon_rag.compressors.beacon import BeaconCompressor
from beacon_rag.engine import Engine
from beacon_rag.models import load_model
from beacon_rag.segments import Block, Message

torch.set_num_threads(1)
lm = load_model()
plugin_dir, n = sys.argv[1], int(sys.argv[2])
ex = make_examples("rag-qa", lm, n, 512, seed=0)
for ratio in (4, 8):
    comp = BeaconCompressor(ratio=ratio, plugin=plugin_dir, keep="numbers")
    eng = Engine(lm, compressor=comp, persist=False, memory_bytes=ENGINE_MEMORY_BYTES)
    sep = merged = 0
    for e in ex:
        user = e.messages[-1]
        blocks = user.content
        docs = [b for b in blocks if getattr(b, "document", False)]
        one = [blocks[0], Block("".join(b.text for b in docs), document=True, id="all"), blocks[-1]]
        msgs = [*e.messages[:-1], Message("user", one)]
        sep += answer_correct(eng.generate(e.messages, max_new_tokens=24).text, e.answer)
        merged += answer_correct(eng.generate(msgs, max_new_tokens=24).text, e.answer)
    print(ratio, "separate", sep, "merged", merged, "of", n, flush=True)
