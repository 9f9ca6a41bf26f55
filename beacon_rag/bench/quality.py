"""``beacon-rag bench quality``: what a compressor costs in answers, against full context and none.

Why this bench: a compressed KV cache is only worth storing if the model still answers from it.
Every figure is therefore measured three times in one run, on the same prompts, greedy:

* the method under test (``--compressor`` at ``--ratio``), through the engine (chained placement;
  every cached segment compressed, the question tail prefilled live, as in production);
* ``full``: the exact compressor, i.e. a plain prefill of the whole prompt (the ceiling);
* ``none``: the same question with no context (the floor: what the model knows or guesses).

``ratio_to_full`` puts the method on the scale that matters for a small model whose own
long-context reach is short (see reference/peers.md): how much of the full-context result survives.

Tasks (all text from the *held-out* split of the offline corpus, which beacon training never sees;
fixed seeds, so every method and every run sees the same examples):

* ``passkey``: a 5-digit pass key sentence hidden at a random depth in ``--context-tokens`` of
  filler, given as one document; "What is the pass key?".
* ``rag-qa``: ``--docs`` documents of prose, each carrying one invented access code of a named
  place; the question asks for one place's code (the layout of ``bench placement``). ``--rotate``
  asks each drawn example once with the asked document at each position, and reports accuracy by
  position too: a steadier figure for comparing plug-ins than the drawn positions give.
* ``multiturn``: a conversation whose first user turns state personal facts ("My locker number
  is 4172."), then unrelated turns carrying held-out passages, then a question recalling one fact.
  Every turn but the last is a cached (chained) segment.
* ``lm-loss``: mean next-token loss on the held-out text that follows a context of
  ``--context-tokens`` tokens, teacher-forced through the plain model on a cache built from the
  compressed context. The first continuation token is fed in every condition (there is nothing to
  predict it from without context), so ``--continuation-tokens`` tokens are scored in each.
  ``gap_recovered = (none - loss) / (none - full)``: 1 means as good as full context, 0 as bad as none.
  Its ``ratio_to_full`` is ``exp(full - loss)``, full-context perplexity over the method's (1 = as good).
  ``--live-tail N`` keeps the context's last ``N`` tokens raw in every condition (``none`` included):
  they are prefilled after the compressed memory, as the engine prefills an uncached tail and as
  the paper's live window stays raw. The compressor then only sees the older tokens, and the gap
  measures what the memory keeps of them; with no tail the figure mostly measures the last few
  tokens before the continuation, which is why keeping the newest tokens (``streaming``) looks so good
  there. Their ``N`` raw slots count in ``kept_slots_per_token``. A beacon method with a tail of its
  own (``beacon+tail128:8``, or ``--tail``) stores such raw tokens inside each cached segment
  instead, so they count against that method's own budget and ``none`` stays the empty context.

``kept_slots_per_token`` counts every cached segment (system prompt and chat glue included, as the
engine compresses them all); the live question tail is not counted.

A QA answer is correct when the expected number appears in it as a whole digit run (the model
answers in full sentences, so we allow 24+ new tokens and do not require an exact answer string).
QA reports also give ``digits_found`` (see ``digits_found``): how much of the expected number the
answer's first number holds, in any order. Guessed numbers share digits by chance, so ``none``'s
figure is the floor to read it against.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from beacon_rag.bench.corpus import split_sources
from beacon_rag.bench.report import markdown_table
from beacon_rag.compressors import compressor_options
from beacon_rag.compressors.base import Compressor
from beacon_rag.compressors.beacon import DEFAULT_WINDOW, KEEP_CHOICES, BeaconCompressor
from beacon_rag.compressors.beacon import default_options as default_beacon_options
from beacon_rag.compressors.exact import ExactCompressor
from beacon_rag.compressors.knorm import KnormCompressor
from beacon_rag.compressors.streaming import DEFAULT_SINK, StreamingCompressor
from beacon_rag.engine import Engine, rag_messages
from beacon_rag.kv import KVContext
from beacon_rag.models import LoadedModel, load_model
from beacon_rag.segments import Message

logger = logging.getLogger(__name__)

TASKS = ("passkey", "rag-qa", "multiturn", "lm-loss")
COMPRESSORS = ("beacon", "streaming", "knorm", "exact")
DEFAULT_CONTEXT_TOKENS = {"passkey": 1024, "rag-qa": 512, "multiturn": 512, "lm-loss": 1024}
DEFAULT_RATIO = 8
MIN_ANSWER_TOKENS = 24  # the embedded model answers in full sentences; fewer tokens cut answers short
ENGINE_MEMORY_BYTES = 256 << 20  # examples are never repeated, so a small RAM tier is plenty
PASSKEY_QUESTION = "What is the pass key?"
PLACES = (
    "the Harbor Museum", "the North Gate", "the seed vault", "the clock tower", "the east archive",
    "the old mill", "the river lock", "the glass house", "the signal station", "the salt store",
    "the observatory", "the boat shed", "the wine cellar", "the west tunnel", "the chapel crypt",
    "the pump house", "the radio mast", "the ice house", "the map room", "the powder store",
)
PERSONAL_FACTS = (  # (statement, the assistant's echo, question); {} is a 4-digit number
    ("My locker number is {}.", "your locker number is {}", "What is my locker number?"),
    ("The code of my bike lock is {}.", "the code of your bike lock is {}", "What is the code of my bike lock?"),
    ("My apartment door code is {}.", "your apartment door code is {}", "What is my apartment door code?"),
    ("My library card number is {}.", "your library card number is {}", "What is my library card number?"),
    ("The PIN of my garage door is {}.", "the PIN of your garage door is {}", "What is the PIN of my garage door?"),
    ("My hotel room number is {}.", "your hotel room number is {}", "What is my hotel room number?"),
)
MULTITURN_SYSTEM = "You are a helpful assistant. Remember what the user tells you."


# --------------------------------------------------------------------------- examples
@dataclass(frozen=True)
class QAExample:
    """One question with its context (``messages``), the same question alone, and the answer."""

    messages: list[Message]
    none_messages: list[Message]
    answer: str
    context_text: str  # the text the answer must be read from (tests check it is really there)


@dataclass(frozen=True)
class LMExample:
    """A context and the text that follows it, as token ids of one contiguous held-out stretch."""

    context_ids: list[int]
    continuation_ids: list[int]


_HELDOUT_IDS: dict[str, list[int]] = {}


def heldout_ids(lm: LoadedModel) -> list[int]:
    """The held-out corpus as token ids (once per tokenizer: encoding 270K characters takes a moment)."""
    ids = _HELDOUT_IDS.get(lm.tokenizer_digest)
    if ids is None:
        text = "\n\n".join(text for _name, text in split_sources("heldout"))
        ids = lm.tokenizer.encode(text, add_special_tokens=False)
        _HELDOUT_IDS[lm.tokenizer_digest] = ids
    return ids


def filler(lm: LoadedModel, rng: random.Random, tokens: int) -> str:
    """About ``tokens`` tokens of held-out prose from a random place (decoded, so re-encoding may differ by a few)."""
    ids = heldout_ids(lm)
    if tokens < 1:
        return ""
    if tokens >= len(ids):
        raise ValueError(f"the held-out corpus has {len(ids)} tokens, fewer than the {tokens} requested")
    start = rng.randrange(0, len(ids) - tokens)
    return lm.tokenizer.decode(ids[start : start + tokens]).strip()


def insert_at_depth(text: str, sentence: str, depth: float) -> str:
    """Put ``sentence`` at the boundary (line or sentence end) nearest ``depth`` in [0, 1] of ``text``.

    Inserting at a boundary keeps the needle a sentence of its own rather than splitting a word,
    so the task measures memory, not robustness to garbled text.
    """
    target = depth * len(text)
    cuts = [0, len(text)] + [m.end() for m in re.finditer(r"\n+|(?<=[.!?:])\s+", text)]
    cut = min(cuts, key=lambda c: (abs(c - target), c))
    if cut == 0:
        return f"{sentence} {text}" if text else sentence
    if cut == len(text):
        return f"{text.rstrip()} {sentence}"
    gap = text[:cut][len(text[:cut].rstrip()):]  # the whitespace the cut follows, kept after the needle too
    return f"{text[:cut]}{sentence}{gap if chr(10) in gap else ' '}{text[cut:]}"


def _codes(rng: random.Random, count: int, digits: int) -> list[str]:
    low = 10 ** (digits - 1)
    return [str(c) for c in rng.sample(range(low, 10 * low), count)]


def make_passkey_examples(lm: LoadedModel, count: int, context_tokens: int, seed: int = 0) -> list[QAExample]:
    """Pass key retrieval: one document of ``context_tokens`` tokens with the key at a random depth."""
    rng = random.Random(f"passkey-{seed}")
    examples = []
    for _ in range(count):
        code = _codes(rng, 1, 5)[0]
        needle = f"The pass key is {code}. Remember it. {code} is the pass key."
        budget = max(context_tokens - len(lm.encode(needle)), 0)
        document = insert_at_depth(filler(lm, rng, budget), needle, rng.random())
        examples.append(QAExample(rag_messages(PASSKEY_QUESTION, [document]), rag_messages(PASSKEY_QUESTION, []),
                                  code, document))
    return examples


def coded_documents(lm: LoadedModel, rng: random.Random, places: Sequence[str], codes: Sequence[str],
                    tokens_each: int) -> list[str]:
    """One document per place: filler text of about ``tokens_each`` tokens with the place's access
    code hidden at a random depth (the fact every multi-document QA task asks about)."""
    documents = []
    for place, code in zip(places, codes):
        fact = f"The access code for {place} is {code}."
        body = filler(lm, rng, max(tokens_each - len(lm.encode(fact)), 0))
        documents.append(insert_at_depth(body, fact, rng.random()))
    return documents


def make_rag_examples(
    lm: LoadedModel, count: int, context_tokens: int, docs: int = 3, seed: int = 0, rotate: bool = False
) -> list[QAExample]:
    """Multi-document QA: ``docs`` documents (``context_tokens`` in all), one invented fact in each.

    ``rotate`` turns each drawn example into ``docs`` examples, the asked document moved to each
    position in turn (the others keep their order), so ``count * docs`` examples come back, grouped
    by drawn example. Why: with few examples the drawn positions of the asked document decide much
    of the score (a beacon memory, like the model itself, reads some positions better than others);
    every position once per example takes that out of a comparison between plug-ins.
    """
    if not 1 <= docs <= len(PLACES):
        raise ValueError(f"docs must be between 1 and {len(PLACES)}, got {docs}")
    rng = random.Random(f"rag-qa-{seed}")
    per = context_tokens // docs
    examples = []
    for _ in range(count):
        places = rng.sample(PLACES, docs)
        codes = _codes(rng, docs, 4)
        documents = coded_documents(lm, rng, places, codes, per)
        target = rng.randrange(docs)
        question = f"What is the access code for {places[target]}?"
        if rotate:
            others = documents[:target] + documents[target + 1:]
            orders = [others[:position] + [documents[target]] + others[position:] for position in range(docs)]
        else:
            orders = [documents]
        examples += [QAExample(rag_messages(question, order), rag_messages(question, []), codes[target],
                               documents[target]) for order in orders]
    return examples


def make_multiturn_examples(
    lm: LoadedModel, count: int, context_tokens: int, facts: int = 2, filler_turns: int = 3, seed: int = 0
) -> list[QAExample]:
    """Conversation recall: facts stated in the first turns, then unrelated passages, then a question.

    The assistant repeats the fact back in its reply (as chat assistants do): measured on the embedded
    model, a bare "Noted." made even the full context fail (it copied the last assistant reply
    instead), which would leave nothing for compression to lose. The fact still lives only in the
    early turns, which must survive compression of themselves and of everything after them.
    """
    if not 1 <= facts <= len(PERSONAL_FACTS):
        raise ValueError(f"facts must be between 1 and {len(PERSONAL_FACTS)}, got {facts}")
    if filler_turns < 0:
        raise ValueError(f"filler_turns must be >= 0, got {filler_turns}")
    rng = random.Random(f"multiturn-{seed}")
    per = context_tokens // filler_turns if filler_turns else 0
    examples = []
    for _ in range(count):
        chosen = rng.sample(PERSONAL_FACTS, facts)
        codes = _codes(rng, facts, 4)
        messages = [Message("system", MULTITURN_SYSTEM)]
        for (statement, echo, _question), code in zip(chosen, codes):
            messages.append(Message("user", f"{statement.format(code)} Please remember it."))
            messages.append(Message("assistant", f"Noted: {echo.format(code)}."))
        for _ in range(filler_turns):
            passage = filler(lm, rng, per)
            messages.append(Message("user", f"Here is a passage I am reading:\n\n{passage}"))
            messages.append(Message("assistant", "Thank you for sharing it."))
        target = rng.randrange(facts)
        question = f"Going back to what I told you at the start. {chosen[target][2]}"
        messages.append(Message("user", question))
        examples.append(QAExample(messages, [Message("system", MULTITURN_SYSTEM), Message("user", question)],
                                  codes[target], chosen[target][0].format(codes[target])))
    return examples


def make_lm_examples(
    lm: LoadedModel, count: int, context_tokens: int, continuation_tokens: int = 64, seed: int = 0
) -> list[LMExample]:
    """Contiguous held-out stretches: ``context_tokens`` of context, then ``continuation_tokens + 1``."""
    if context_tokens < 1 or continuation_tokens < 1:
        raise ValueError("context_tokens and continuation_tokens must be >= 1")
    ids = heldout_ids(lm)
    span = context_tokens + continuation_tokens + 1
    if span >= len(ids):
        raise ValueError(f"the held-out corpus has {len(ids)} tokens, fewer than the {span} needed")
    rng = random.Random(f"lm-loss-{seed}")
    examples = []
    for _ in range(count):
        start = rng.randrange(0, len(ids) - span)
        examples.append(LMExample(ids[start : start + context_tokens], ids[start + context_tokens : start + span]))
    return examples


def make_examples(task: str, lm: LoadedModel, count: int, context_tokens: int, seed: int = 0,
                  docs: int = 3, continuation_tokens: int = 64,
                  rotate: bool = False) -> list[QAExample] | list[LMExample]:
    """The examples of ``task`` (deterministic for a given tokenizer, seed and sizes); ``rotate``
    applies to ``rag-qa`` only (see ``make_rag_examples``)."""
    if rotate and task != "rag-qa":
        raise ValueError(f"rotate applies to rag-qa only, not {task}")
    if count < 1:
        raise ValueError(f"examples must be >= 1, got {count}")
    if context_tokens < 1:
        raise ValueError(f"context tokens must be >= 1, got {context_tokens}")
    if task == "passkey":
        return make_passkey_examples(lm, count, context_tokens, seed)
    if task == "rag-qa":
        return make_rag_examples(lm, count, context_tokens, docs, seed, rotate)
    if task == "multiturn":
        return make_multiturn_examples(lm, count, context_tokens, seed=seed)
    if task == "lm-loss":
        return make_lm_examples(lm, count, context_tokens, continuation_tokens, seed)
    raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")


# --------------------------------------------------------------------------- scoring
def answer_correct(answer: str, expected: str) -> bool:
    """``expected`` appears in ``answer`` as a whole run of digits (so 4172 does not match 41720)."""
    return expected in re.findall(r"\d+", answer)


def digits_found(answer: str, expected: str) -> float:
    """How many of the expected number's digits the answer's first digit run holds, in any order.

    Why: exact-match accuracy of 0 says nothing of how near the answers came. Beacons that keep a
    pass key's digits but lose their order ("23572" for 32275) score 1 here and 0 on accuracy, while a
    method that kept nothing of the number scores 0 on both. The count of shared digits is divided by
    the longer of the two runs, so a long run of digits cannot collect credit by listing them all.
    """
    runs = re.findall(r"\d+", answer)
    if not runs or not expected:
        return 0.0
    shared = sum((Counter(runs[0]) & Counter(expected)).values())
    return shared / max(len(runs[0]), len(expected))


def gap_recovered(loss: float, full: float, none: float) -> float | None:
    """Share of the no-context -> full-context loss gap the method keeps; ``None`` if there is no gap."""
    gap = none - full
    if not math.isfinite(gap) or abs(gap) < 1e-12:
        return None
    return (none - loss) / gap


def continuation_loss(lm: LoadedModel, context: KVContext | None, ids: list[int], fed: int = 1) -> float:
    """Mean loss of ``ids[fed:]`` given ``context`` and ``ids[:fed]`` (teacher-forced, plain model)."""
    if fed < 1 or len(ids) <= fed:
        raise ValueError(f"a continuation needs more than {fed} tokens ({fed} fed, at least one scored)")
    cache = context.to_cache() if context is not None and context.length else None
    inputs = torch.tensor([ids], dtype=torch.long, device=lm.device)
    with lm.lock, torch.inference_mode():
        out = lm.model(input_ids=inputs, **lm.cache_kwargs(cache), use_cache=cache is not None)
    logits = out.logits[0, fed - 1 : -1].float()
    return float(torch.nn.functional.cross_entropy(logits, inputs[0, fed:]))


# --------------------------------------------------------------------------- compressors
def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def parse_quality_ratio(text: str) -> int | float | str:
    """``--ratio``: an integer, a real number (eviction methods accept e.g. 1.5) or ``adapt`` (beacon)."""
    if text == "adapt":
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number or 'adapt', got {text!r}") from None


def build_compressor(
    name: str,
    ratio: float | str | None = None,
    window: int | None = None,
    plugin: str | None = None,
    sink: int | None = None,
    lm: LoadedModel | None = None,
    keep: str | None = None,
    tail: int | None = None,
) -> Compressor:
    """The compressor under test; options that do not apply to ``name`` are refused, not ignored.

    ``keep`` (beacon only): ``None`` keeps what the plug-in was trained with, a kind of
    ``KEEP_KINDS`` forces those verbatim tokens, ``"none"`` forces beacons only. ``tail`` (beacon
    only): each segment's newest tokens kept raw after the beacons.

    Built here rather than through the registry so this bench does not depend on which
    methods ``beacon_rag.compressors`` has registered yet.
    """
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; use one of {', '.join(COMPRESSORS)}")
    if name != "beacon" and (window is not None or plugin is not None or keep is not None or tail is not None):
        raise ValueError("--window, --plugin, --keep and --tail apply to the beacon compressor only")
    if keep is not None and keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {', '.join(KEEP_CHOICES)}, got {keep!r}")
    forced = compressor_options(None, None, keep, tail)  # {"keep": kind} ("none" read as None), {"tail": N}
    if name != "streaming" and sink is not None:
        raise ValueError("--sink applies to the streaming compressor only")
    if name == "exact":
        if ratio not in (None, 1):
            raise ValueError("exact keeps every token; it takes no ratio")
        return ExactCompressor()
    ratio = DEFAULT_RATIO if ratio is None else ratio
    if name == "beacon":
        if isinstance(ratio, float):
            if not ratio.is_integer():
                raise ValueError(f"beacon needs an integer ratio (2, 4, 8, 16, 32) or 'adapt', got {ratio}")
            ratio = int(ratio)
        if plugin == "untrained":  # the baseline every trained plug-in must beat
            # Same window as the shipped plug-in it is compared with: only the weights differ.
            shipped = default_beacon_options(lm, {"ratio": ratio}) if lm is not None else {}
            return BeaconCompressor(ratio=ratio, window=window or shipped.get("window", DEFAULT_WINDOW),
                                    keep=forced.get("keep"), tail=forced.get("tail", 0))
        options: dict[str, object] = {"ratio": ratio, **forced}
        if window is not None:
            options["window"] = window
        if plugin is not None:
            options["plugin"] = plugin
        if lm is not None:  # the plug-in shipped for this model (and its window), as the engine does
            options = default_beacon_options(lm, options)
        options.setdefault("window", DEFAULT_WINDOW)
        return BeaconCompressor(**options)  # type: ignore[arg-type]
    if name == "streaming":
        return StreamingCompressor(ratio, DEFAULT_SINK if sink is None else sink)  # type: ignore[arg-type]
    return KnormCompressor(ratio)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- evaluation
@dataclass
class _Tally:
    """Running totals for one condition (method, full or none)."""

    scores: list[float] = field(default_factory=list)
    slots: int = 0
    raw: int = 0
    outputs: list[str] = field(default_factory=list)
    digits: list[float] = field(default_factory=list)  # ``digits_found`` per QA answer

    def mean(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else float("nan")

    def digits_mean(self) -> float | None:
        return sum(self.digits) / len(self.digits) if self.digits else None

    def kept_per_token(self) -> float | None:
        return self.slots / self.raw if self.raw else None


def _answer(engine: Engine, messages: list[Message], expected: str, tally: _Tally, max_new_tokens: int) -> None:
    result = engine.generate(messages, max_new_tokens=max_new_tokens)
    tally.scores.append(float(answer_correct(result.text, expected)))
    tally.slots += sum(u.slots for u in result.segments)
    tally.raw += sum(u.raw_tokens for u in result.segments)
    tally.outputs.append(result.text)
    tally.digits.append(digits_found(result.text, expected))


def _run_qa(lm: LoadedModel, compressors: list[Compressor], examples: list[QAExample],
            max_new_tokens: int) -> tuple[list[_Tally], _Tally, _Tally, list[int]]:
    """Every method on every example; ``full`` and ``none`` once per example, shared by all methods."""
    full_engine = Engine(lm, compressor=ExactCompressor(), persist=False, memory_bytes=ENGINE_MEMORY_BYTES)
    engines = [full_engine if c.name == "exact" else
               Engine(lm, compressor=c, persist=False, memory_bytes=ENGINE_MEMORY_BYTES) for c in compressors]
    methods, full, none = [_Tally() for _ in compressors], _Tally(), _Tally()
    prompt_tokens = []
    names = "+".join(c.name for c in compressors)
    for example in tqdm(examples, desc=f"quality {names}", unit="example"):
        _answer(full_engine, example.messages, example.answer, full, max_new_tokens)
        for engine, tally in zip(engines, methods):
            if engine is full_engine:  # exact is the full context: do not run it twice
                tally.scores.append(full.scores[-1])
                tally.slots, tally.raw = full.slots, full.raw
                tally.outputs.append(full.outputs[-1])
                tally.digits.append(full.digits[-1])
            else:
                _answer(engine, example.messages, example.answer, tally, max_new_tokens)
        _answer(full_engine, example.none_messages, example.answer, none, max_new_tokens)
        prompt_tokens.append(len(full_engine.prompt_token_ids(example.messages)))
    return methods, full, none, prompt_tokens


def _run_lm(lm: LoadedModel, compressors: list[Compressor], examples: list[LMExample],
            live_tail: int = 0) -> tuple[list[_Tally], _Tally, _Tally, list[int]]:
    """Continuation loss after each method's context; ``full`` and ``none`` once per example.

    The last ``live_tail`` context tokens are fed raw before the continuation in every condition
    (see ``--live-tail``); only the continuation is scored.
    """
    exact = ExactCompressor()
    methods, full, none = [_Tally() for _ in compressors], _Tally(), _Tally()
    names = "+".join(c.name for c in compressors)
    for example in tqdm(examples, desc=f"lm-loss {names}", unit="example"):
        cut = len(example.context_ids) - live_tail
        if cut < 1:
            raise ValueError(f"--live-tail {live_tail} leaves nothing to compress of a {len(example.context_ids)}-token context")
        older, fed = example.context_ids[:cut], example.context_ids[cut:] + example.continuation_ids
        for tally, method_ in ((full, exact), *zip(methods, compressors)):
            if tally is not full and method_.name == "exact":
                tally.scores.append(full.scores[-1])
                tally.slots, tally.raw = full.slots, full.raw
                continue
            kv = method_.compress(lm, older, KVContext(lm))
            context = KVContext(lm)
            context.append(kv)
            tally.scores.append(continuation_loss(lm, context, fed, live_tail + 1))
            tally.slots += kv.slots + live_tail
            tally.raw += kv.raw_tokens + live_tail
        none.scores.append(continuation_loss(lm, None, fed, live_tail + 1))
    return methods, full, none, [len(e.context_ids) for e in examples]


def _by_position(tally: _Tally, docs: int) -> list[float]:
    """Accuracy with the asked document at each position, for ``--rotate`` (whose examples cycle
    through the positions in order)."""
    return [sum(tally.scores[p::docs]) / len(tally.scores[p::docs]) for p in range(docs)]


def _rotation_report(args: argparse.Namespace, full: _Tally) -> dict[str, Any]:
    """The report's fields that say the rag-qa examples were rotated (none when they were not)."""
    if not getattr(args, "rotate", False):
        return {}
    return {"rotated": True, "docs": args.docs, "full_by_position": _by_position(full, args.docs)}


def _per_example(task: str, examples: Sequence[QAExample | LMExample], methods: dict[str, _Tally],
                 full: _Tally, none: _Tally) -> list[dict[str, Any]]:
    """Every example under every condition (``--details``): the answers of a QA task with the one
    expected, or the losses of lm-loss; a score of 0 of 6 says nothing of how near the answers came."""
    lm_loss = task == "lm-loss"
    rows = []
    for i, example in enumerate(examples):
        row: dict[str, Any] = {} if lm_loss else {"expected": example.answer}  # type: ignore[union-attr]
        for name, tally in (*methods.items(), ("full", full), ("none", none)):
            row[name] = tally.scores[i] if lm_loss else tally.outputs[i]
        rows.append(row)
    return rows


class MethodSpec(NamedTuple):
    """One ``--methods`` entry: compressor name, ratio, plug-in, verbatim kind and raw tail."""

    name: str
    ratio: float | str
    plugin: str | None = None
    keep: str | None = None
    tail: int | None = None


def parse_method(spec: str) -> MethodSpec:
    """``NAME[+KEEP][+tailN]:RATIO[:PLUGIN]`` as given to ``--methods``.

    E.g. ``beacon:4``, ``beacon:4:untrained``, ``knorm:8``; ``beacon+digits:4`` forces verbatim
    digits and ``beacon+none:4`` forces beacons only (see ``build_compressor``);
    ``beacon+none+tail128:8`` keeps each segment's newest 128 tokens raw after ratio-8 beacons.
    """
    usage = ("--methods entries look like beacon:4, beacon:4:untrained, beacon+digits:4, beacon+tail128:8, "
             f"streaming:8 or knorm:8; got {spec!r}")
    parts = spec.split(":")
    name, *modifiers = parts[0].split("+")
    if len(parts) not in (2, 3) or name not in COMPRESSORS or name == "exact":
        raise ValueError(usage)
    if len(parts) == 3 and name != "beacon":
        raise ValueError(f"only beacon takes a plug-in (third field), got {spec!r}")
    keep: str | None = None
    tail: int | None = None
    for modifier in modifiers:
        if name != "beacon":
            raise ValueError(f"only beacon takes +KEEP or +tailN; got {spec!r}")
        if modifier in KEEP_CHOICES and keep is None:
            keep = modifier
        elif modifier.startswith("tail") and modifier[4:].isdigit() and tail is None:
            tail = int(modifier[4:])
        else:
            raise ValueError(f"+{modifier} is not one of +{', +'.join(KEEP_CHOICES)} or +tailN "
                             f"(each at most once); got {spec!r}")
    return MethodSpec(name, parse_quality_ratio(parts[1]), parts[2] if len(parts) == 3 else None, keep, tail)


def check_task_options(args: argparse.Namespace) -> None:
    """Refuse an option the task would silently ignore, before the model loads.

    Why: a figure measured without the option a user asked for (``--live-tail`` on a QA task, say)
    would be reported as if it had been applied.
    """
    if getattr(args, "rotate", False) and args.task != "rag-qa":
        raise ValueError(f"--rotate applies to --task rag-qa only, not {args.task}")
    if args.task == "lm-loss":
        return
    if args.live_tail:
        raise ValueError(f"--live-tail applies to --task lm-loss only, not {args.task} "
                         "(QA prompts already prefill their question live)")
    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.max_tokens < MIN_ANSWER_TOKENS:
        logger.warning("--max-tokens %d < %d: full-sentence answers may be cut before the number",
                       args.max_tokens, MIN_ANSWER_TOKENS)


def run_matrix(args: argparse.Namespace, lm: LoadedModel | None = None) -> dict[str, Any]:
    """Several methods on the same examples of one task, with ``full`` and ``none`` measured once.

    This is the side-by-side comparison (trained vs untrained plug-in vs training-free methods at
    the same kept-slot budget) without paying for the two baselines once per method.
    """
    started = time.perf_counter()
    check_task_options(args)
    specs = [parse_method(m) for m in args.methods.split(",") if m.strip()]
    for name, ratio, plugin, keep, tail in specs:  # bad options fail before the model loads
        build_compressor(name, ratio, args.window if name == "beacon" else None, plugin, keep=keep, tail=tail)
    lm = lm if lm is not None else load_model(args.model)
    compressors = [build_compressor(name, ratio, args.window if name == "beacon" else None, plugin, lm=lm, keep=keep,
                                    tail=tail)
                   for name, ratio, plugin, keep, tail in specs]
    context_tokens = args.context_tokens or DEFAULT_CONTEXT_TOKENS[args.task]
    rotate = getattr(args, "rotate", False)
    examples = make_examples(args.task, lm, args.examples, context_tokens, args.seed, args.docs,
                             args.continuation_tokens, rotate)
    if args.task == "lm-loss":
        tallies, full, none, lengths = _run_lm(lm, compressors, examples, args.live_tail)  # type: ignore[arg-type]
    else:
        tallies, full, none, lengths = _run_qa(lm, compressors, examples, args.max_tokens)  # type: ignore[arg-type]
    full_score, none_score = full.mean(), none.mean()
    rows = []
    for spec, compressor, tally in zip(args.methods.split(","), compressors, tallies):
        score = tally.mean()
        row: dict[str, Any] = {"method": spec.strip(), "compressor_spec": compressor.spec(), "score": score,
                               "kept_slots_per_token": tally.kept_per_token()}
        if args.task == "lm-loss":
            row.update(gap_recovered=gap_recovered(score, full_score, none_score),
                       ratio_to_full=math.exp(full_score - score))
        else:
            row.update(ratio_to_full=(score / full_score) if full_score else None, digits_found=tally.digits_mean())
            if rotate:
                row["by_position"] = _by_position(tally, args.docs)
        rows.append(row)
    report: dict[str, Any] = {
        "task": args.task, "metric": "loss" if args.task == "lm-loss" else "accuracy", "model": lm.name,
        "n": len(examples), "context_tokens": context_tokens, "mean_prompt_tokens": sum(lengths) / len(lengths),
        "seed": args.seed, "full": full_score, "none": none_score, "methods": rows,
        **({"live_tail": args.live_tail} if args.task == "lm-loss" else
           {"full_digits_found": full.digits_mean(), "none_digits_found": none.digits_mean()}),
        **_rotation_report(args, full),
    }
    if getattr(args, "details", False):
        # One key per --methods entry, as the rows name them.
        named = {row["method"]: tally for row, tally in zip(rows, tallies)}
        report["per_example"] = _per_example(args.task, examples, named, full, none)
    report["elapsed_s"] = round(time.perf_counter() - started, 2)
    return report


def _fixed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def matrix_markdown(reports: list[dict[str, Any]]) -> str:
    """One markdown table per task from ``run_matrix`` reports (for READMEs and notes)."""
    out = []
    for report in reports:
        lm_loss = report["task"] == "lm-loss"
        # Reports written before ``digits_found`` existed lack it: "n/a", not a crash.
        digits = "" if lm_loss else (f" (digits found: full {_fixed(report.get('full_digits_found'))}, "
                                     f"none {_fixed(report.get('none_digits_found'))})")
        out.append(f"**{report['task']}** (n={report['n']}, ~{report['mean_prompt_tokens']:.0f} prompt tokens): "
                   f"full {report['full']:.3f}, none {report['none']:.3f}{digits}\n")
        head = ["method", "kept slots / token",
                *(("loss", "gap recovered") if lm_loss else ("accuracy", "/ full", "digits found"))]
        rows = []
        for row in report["methods"]:
            second = row["gap_recovered"] if lm_loss else row["ratio_to_full"]
            cells = [row["method"], f"{row['kept_slots_per_token']:.3f}", f"{row['score']:.3f}", _fixed(second)]
            rows.append(cells if lm_loss else [*cells, _fixed(row.get("digits_found"))])
        out += [*markdown_table(head, rows), ""]
    return "\n".join(out)


def run(args: argparse.Namespace, lm: LoadedModel | None = None) -> dict[str, Any]:
    """Run one task for one method, with ``full`` and ``none`` measured on the same examples.

    ``lm`` lets tests (and notebooks) pass a loaded model; the CLI loads ``--model``. With
    ``--methods`` it runs :func:`run_matrix` instead.
    """
    if getattr(args, "methods", None):
        return run_matrix(args, lm)
    started = time.perf_counter()
    check_task_options(args)
    keep, tail = getattr(args, "keep", None), getattr(args, "tail", None)
    build_compressor(args.compressor, args.ratio, args.window, args.plugin, args.sink, keep=keep,
                     tail=tail)  # bad options fail fast
    lm = lm if lm is not None else load_model(args.model)
    compressor = build_compressor(args.compressor, args.ratio, args.window, args.plugin, args.sink, lm=lm, keep=keep,
                                  tail=tail)
    context_tokens = args.context_tokens or DEFAULT_CONTEXT_TOKENS[args.task]
    rotate = getattr(args, "rotate", False)
    examples = make_examples(args.task, lm, args.examples, context_tokens, args.seed, args.docs,
                             args.continuation_tokens, rotate)
    if args.task == "lm-loss":
        (method,), full, none, lengths = _run_lm(lm, [compressor], examples, args.live_tail)  # type: ignore[arg-type]
    else:
        (method,), full, none, lengths = _run_qa(lm, [compressor], examples, args.max_tokens)  # type: ignore[arg-type]

    score, full_score, none_score = method.mean(), full.mean(), none.mean()
    report: dict[str, Any] = {
        "task": args.task,
        "compressor": compressor.name,
        "ratio": getattr(compressor, "ratio", None),
        "compressor_spec": compressor.spec(),
        "model": lm.name,
        "n": len(examples),
        "context_tokens": context_tokens,
        "mean_prompt_tokens": sum(lengths) / len(lengths),
        "seed": args.seed,
    }
    if args.task == "lm-loss":
        report.update(
            loss=score, full=full_score, none=none_score,
            gap_recovered=gap_recovered(score, full_score, none_score),
            # perplexity of full context over that of the method: 1.0 = as good as full, lower = worse
            ratio_to_full=math.exp(full_score - score),
            continuation_tokens=args.continuation_tokens,
            live_tail=args.live_tail,
        )
    else:
        report.update(
            accuracy=score, full=full_score, none=none_score,
            ratio_to_full=(score / full_score) if full_score else None,
            max_new_tokens=args.max_tokens,
            digits_found=method.digits_mean(), full_digits_found=full.digits_mean(),
            none_digits_found=none.digits_mean(),
            **_rotation_report(args, full),
        )
        if rotate:
            report["by_position"] = _by_position(method, args.docs)
    report["kept_slots_per_token"] = method.kept_per_token()
    report["full_slots_per_token"] = full.kept_per_token()
    if getattr(args, "details", False):
        report["per_example"] = _per_example(args.task, examples, {"method": method}, full, none)
    report["elapsed_s"] = round(time.perf_counter() - started, 2)
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m beacon_rag.bench.quality ...``: the bench without the CLI wiring."""
    import json

    parser = argparse.ArgumentParser(prog="beacon-rag bench quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is faster on a CPU shared with other work)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(run(args), indent=None if args.json else 2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--compressor", default="beacon", choices=COMPRESSORS)
    parser.add_argument("--ratio", type=parse_quality_ratio, default=None,
                        help=f"compression ratio (default {DEFAULT_RATIO}; beacon: 2/4/8/16/32 or adapt; "
                        "streaming/knorm: any number >= 1)")
    parser.add_argument("--window", type=int, default=None, help=f"beacon window (default {DEFAULT_WINDOW})")
    parser.add_argument("--plugin", default=None, help="beacon plug-in folder; default: the plug-in shipped for the model if any; "
                        "'untrained' forces the untrained copy (the baseline)")
    parser.add_argument("--sink", type=int, default=None, help=f"streaming sink tokens (default {DEFAULT_SINK})")
    parser.add_argument("--keep", choices=KEEP_CHOICES, default=None,
                        help="beacon: also keep these tokens raw (digits, numbers), or none; default: what the "
                        "plug-in was trained with")
    parser.add_argument("--tail", type=_non_negative, default=None,
                        help="beacon: keep each segment's newest N tokens raw after the beacons of the older "
                        "ones (N more slots; default 0)")
    parser.add_argument("--methods", default=None,
                        help="compare several methods on the same examples, e.g. "
                        "beacon:4,beacon:4:untrained,beacon+digits:4,beacon+none+tail128:8,streaming:4,knorm:4 "
                        "(replaces --compressor/--ratio)")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--context-tokens", type=int, default=None,
                        help="context length in tokens (default: " +
                        ", ".join(f"{k} {v}" for k, v in DEFAULT_CONTEXT_TOKENS.items()) + ")")
    parser.add_argument("--docs", type=int, default=3, help="documents per rag-qa example")
    parser.add_argument("--rotate", action="store_true",
                        help="rag-qa: ask each drawn example once with the asked document at every position "
                        "(--examples x --docs answers; the report adds accuracy by position)")
    parser.add_argument("--continuation-tokens", type=int, default=64, help="scored tokens per lm-loss example")
    parser.add_argument("--live-tail", type=_non_negative, default=0,
                        help="lm-loss: keep the context's last N tokens raw in every condition, so the "
                        "gap measures what the compressed older tokens carry (default 0)")
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens per answer (greedy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--details", action="store_true", help="include every answer in the report")
    parser.add_argument("--json", action="store_true")


if __name__ == "__main__":
    main()
