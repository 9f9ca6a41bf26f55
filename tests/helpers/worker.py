"""A worker process for multi-process tests: a tiny model, one shared cache directory, a query mix.

Run as ``python -m tests.helpers.worker CACHE_DIR SEED QUERIES`` from the project root. Prints one
JSON line per answered query: {"query": i, "tokens": [...], "sources": {key: source}}.
Every process builds the same tiny model (fixed seed) and tokenizer, so answers are comparable.
"""

from __future__ import annotations

import json
import random
import sys

import torch

from beacon_rag import Engine, rag_messages

CORPUS = [f"Record {i}: the {colour} crate in bay {i * 7 % 13} holds {item}. " * 6
          for i, (colour, item) in enumerate(zip(
              ["red", "blue", "green", "grey", "white", "black", "amber", "teal", "pink", "gold"],
              ["rope", "nails", "maps", "salt", "oars", "tar", "flags", "bells", "lamps", "nets"]))]
QUESTIONS = ["Which crate holds the maps?", "What is in bay 3?", "Which colour is the salt crate?",
             "Where are the oars?", "What does the teal crate hold?"]


def tokenizer():
    from transformers import AutoTokenizer

    from beacon_rag.models.loader import _converted_gguf_folder, embedded_gguf_path

    return AutoTokenizer.from_pretrained(_converted_gguf_folder(embedded_gguf_path()))


def queries(count: int, seed: int) -> list[list]:
    """A deterministic mix: 1-3 documents from the shared corpus and a question."""
    rng = random.Random(seed)
    return [[rng.sample(range(len(CORPUS)), rng.randint(1, 3)), rng.randrange(len(QUESTIONS))] for _ in range(count)]


def main() -> None:
    sys.path.insert(0, "tests")
    from conftest import tiny_model

    cache_dir, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    lm = tiny_model("llama", tokenizer(), seed=0)
    engine = Engine(lm, cache_dir=cache_dir, memory_bytes=1 << 20)
    for index, (docs, question) in enumerate(queries(count, seed)):
        result = engine.generate(rag_messages(QUESTIONS[question], [CORPUS[d] for d in docs]), max_new_tokens=4)
        print(json.dumps({"query": index, "docs": docs, "question": question, "tokens": result.token_ids,
                          "sources": {u.key: u.source for u in result.segments}}), flush=True)


if __name__ == "__main__":
    main()
