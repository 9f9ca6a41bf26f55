"""``beacon-rag bench placement``: how far independent placement is from a full prefill.

Multi-document QA built offline: each example has several documents of real stdlib prose,
each carrying one invented fact (an access code of a named place); the question asks for the
code of one of them. The model has never seen the facts, so only reading the context answers.

Modes, all with the exact compressor so only placement differs:
* ``full``: chained placement, which equals a plain prefill of the whole prompt (tested);
* ``independent``: every document encoded after the shared prefix only, placed contiguously;
* ``repair-K``: independent, then the first K tokens of each later document re-encoded in
  the real context (EPIC-style).
Reported per mode: accuracy; the share of examples with the same greedy answer as ``full``;
the share of ``full``'s answer reproduced before the first differing token; and the KL
divergence of the first answer token's distribution from ``full``'s (0 = identical).
"""

from __future__ import annotations

import argparse
import random
import re
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from beacon_rag.bench.corpus import stdlib_text
from beacon_rag.engine import Engine, rag_messages
from beacon_rag.models import load_model

PLACES = [
    "the Harbor Museum", "the North Gate", "the seed vault", "the clock tower", "the east archive",
    "the old mill", "the river lock", "the glass house", "the signal station", "the salt store",
    "the observatory", "the boat shed", "the wine cellar", "the west tunnel", "the chapel crypt",
    "the pump house", "the radio mast", "the ice house", "the map room", "the powder store",
]


@dataclass
class Example:
    documents: list[str]
    question: str
    answer: str


def make_examples(count: int, documents: int, doc_words: int, seed: int = 0) -> list[Example]:
    """Deterministic examples: slices of stdlib prose, one invented fact inserted in each."""
    rng = random.Random(seed)
    words = stdlib_text().split()
    examples = []
    for _ in range(count):
        places = rng.sample(PLACES, documents)
        codes = [str(rng.randint(1000, 9999)) for _ in places]
        docs = []
        for place, code in zip(places, codes):
            start = rng.randrange(0, len(words) - doc_words)
            body = words[start : start + doc_words]
            cut = rng.randrange(len(body) // 4, 3 * len(body) // 4)
            fact = f"The access code for {place} is {code}."
            docs.append(" ".join(body[:cut]) + f" {fact} " + " ".join(body[cut:]))
        target = rng.randrange(documents)
        examples.append(Example(docs, f"What is the access code for {places[target]}?", codes[target]))
    return examples


def correct(answer: str, expected: str) -> bool:
    return expected in re.findall(r"\d{4}", answer)


def _prefix_share(tokens: list[int], reference: list[int]) -> float:
    """Share of the reference answer reproduced before the first differing token."""
    same = 0
    for a, b in zip(tokens, reference):
        if a != b:
            break
        same += 1
    return same / max(len(reference), 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    lm = load_model(args.model)
    examples = make_examples(args.examples, args.docs, args.doc_words, args.seed)
    modes: dict[str, Engine] = {"full": Engine(lm, persist=False, placement="chained"),
                                "independent": Engine(lm, persist=False, placement="independent")}
    for k in args.repair:
        modes[f"repair-{k}"] = Engine(lm, persist=False, placement="independent", repair_tokens=k)
    answers: dict[str, list[list[int]]] = {mode: [] for mode in modes}
    texts: dict[str, list[str]] = {mode: [] for mode in modes}
    kl: dict[str, list[float]] = {mode: [] for mode in modes}
    context_tokens = []
    for example in tqdm(examples, desc="placement", unit="example"):
        messages = rag_messages(example.question, example.documents)
        reference = None
        for mode, engine in modes.items():
            result = engine.generate(messages, max_new_tokens=args.max_tokens)
            answers[mode].append(result.token_ids)
            texts[mode].append(result.text)
            logprobs = engine.next_token_logprobs(messages)  # served from this engine's RAM tier
            reference = logprobs if reference is None else reference
            kl[mode].append(float((reference.exp() * (reference - logprobs)).sum()))
        context_tokens.append(result.usage.input_tokens)
    report: dict[str, Any] = {
        "model": lm.name, "examples": len(examples), "documents": args.docs,
        "mean_prompt_tokens": sum(context_tokens) / len(context_tokens), "modes": {},
    }
    n = len(examples)
    for mode in modes:
        report["modes"][mode] = {
            "accuracy": sum(correct(t, e.answer) for t, e in zip(texts[mode], examples)) / n,
            "same_answer_as_full": sum(a == f for a, f in zip(answers[mode], answers["full"])) / n,
            "answer_prefix_kept": sum(_prefix_share(a, f) for a, f in zip(answers[mode], answers["full"])) / n,
            "first_token_kl_from_full": sum(kl[mode]) / n,
        }
    full = report["modes"]["full"]["accuracy"]
    for mode in report["modes"].values():
        mode["accuracy_vs_full"] = mode["accuracy"] / full if full else None
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--docs", type=int, default=3)
    parser.add_argument("--doc-words", type=int, default=90, help="words of prose around each fact")
    parser.add_argument("--repair", type=int, nargs="*", default=[8, 32], help="repair token counts to try")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", action="store_true")
