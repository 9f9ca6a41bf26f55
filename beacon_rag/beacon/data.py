"""Offline training and evaluation data for the beacon trainer: real text and generated long-context tasks.

Why generated tasks on top of plain text: with a few hundred thousand training tokens (what a CPU
affords), next-token loss on ordinary prose mostly teaches beacons to carry *style*; questions whose
answer sits once somewhere in a long context (a pass key, a value, a fact, one of several documents,
an earlier turn) force the beacons to carry *content*, which is what retrieval-augmented generation
and chat reuse need from a compressed memory.

Everything here is offline and deterministic: filler text is the Python standard library's own
documentation (``beacon_rag.bench.corpus.split_sources``), split by source name into ``train`` and
``heldout``; the example number ``i`` of a generator with seed ``s`` depends only on ``(s, i, split)``,
so a resumed training run sees exactly the examples an uninterrupted one would.

Layout of one example, as inference uses it (see ``Example``): the context (chat header + the long
text) is what the beacon window loop compresses; the prompt (the question and the assistant header)
and the target (the answer) run through the PLAIN model attending to the compressed memory, and the
loss is taken on the target only.
"""

from __future__ import annotations

import logging
import random
import string
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from beacon_rag.models import LoadedModel

logger = logging.getLogger(__name__)

Split = Literal["train", "heldout"]
TRAIN_TASKS = ("lm", "passkey", "kv", "fact", "multidoc", "codes", "multiturn", "recall")
# Task names the quality bench and the trainer's held-out eval use -> internal task names.
BENCH_TASKS = {"passkey": "passkey", "rag-qa": "multidoc", "multiturn": "multiturn", "lm-loss": "lm",
               "kv": "kv", "fact": "fact", "lm": "lm", "multidoc": "multidoc", "codes": "codes", "recall": "recall"}
HELDOUT_SEED_OFFSET = 1_000_003  # held-out generators never reuse a training seed


@dataclass(frozen=True)
class Example:
    """One training or evaluation example, as token ids of ``lm``'s tokenizer.

    * ``context_ids``: compressed by the beacon window loop (for QA tasks: the chat header, the
      system prompt and the long user text; for ``lm``: plain text).
    * ``prompt_ids``: run through the plain model after the memory, no loss (the question, the
      end of the user turn and the assistant header); empty for ``lm``.
    * ``target_ids``: run through the plain model after the prompt; the loss is on these tokens
      (the answer followed by the end-of-turn token, or for ``lm`` the text that follows).
    * ``answer``: the answer as text for exact-match scoring (``""`` for ``lm``).
    * ``answer_span``: ``(start, end)`` of the answer's tokens inside ``target_ids``, or ``None``
      (``lm``, or a tokenization that does not line up). The target sentence is mostly a template
      the question already gives away ("The pass key is ..."): its loss drops as soon as the
      template is learnt, while the few answer tokens are what a compressed memory must carry.
    * ``segment_starts``: where, inside ``context_ids``, the engine would begin a new cached segment
      (each retrieved document, each conversation turn); empty for plain text. Training with
      ``--segments`` restarts the beacon windows there, as inference does.

    ``continuation_ids == prompt_ids + target_ids``; ``loss_start == len(prompt_ids)`` is where the
    loss begins inside the continuation.
    """

    task: str
    context_ids: list[int]
    prompt_ids: list[int]
    target_ids: list[int]
    answer: str = ""
    meta: dict[str, object] = field(default_factory=dict)
    answer_span: tuple[int, int] | None = None
    segment_starts: tuple[int, ...] = ()

    @property
    def continuation_ids(self) -> list[int]:
        return self.prompt_ids + self.target_ids

    @property
    def loss_start(self) -> int:
        return len(self.prompt_ids)

    @property
    def tokens(self) -> int:
        return len(self.context_ids) + len(self.prompt_ids) + len(self.target_ids)


def answer_span(lm: LoadedModel, answer_text: str, answer: str) -> tuple[int, int] | None:
    """Token span of the last ``answer`` inside ``lm.encode(answer_text)``, or ``None``.

    The span starts after the text before the answer with its trailing space stripped, so a
    space that the tokenizer writes as its own token (or glues to the answer) is inside it. If
    the tokens of either prefix are not a prefix of the whole (a merge across the boundary),
    there is no clean span and ``None`` says so rather than scoring the wrong tokens.
    """
    where = answer_text.rfind(answer) if answer else -1
    if where < 0:
        return None
    ids = lm.encode(answer_text)
    head = lm.encode(answer_text[:where].rstrip())
    through = lm.encode(answer_text[: where + len(answer)])
    if ids[: len(head)] != head or ids[: len(through)] != through or len(through) <= len(head):
        return None
    return len(head), len(through)


# ---------------------------------------------------------------------------- filler text
_STREAMS: dict[tuple[str, str, bool], tuple[list[int], tuple[str, ...]]] = {}
_STREAMS_LOCK = threading.Lock()


def filler_stream(lm: LoadedModel, split: Split, package_docs: bool = False) -> tuple[list[int], tuple[str, ...]]:
    """All sources of ``split`` tokenized and joined (blank line between them), and their names.

    ``package_docs`` appends the installed packages' READMEs (``corpus.package_sources``) to the
    training text; the held-out text never has them. Tokenized once per tokenizer, split and
    choice (a few seconds); the source names are returned so tests can check that train and
    held-out data never share a source.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if package_docs and split != "train":
        raise ValueError("package_docs is training text only: the held-out text must not depend on what is installed")
    from beacon_rag.bench.corpus import package_sources, split_sources

    key = (lm.tokenizer_digest, split, package_docs)
    with _STREAMS_LOCK:
        cached = _STREAMS.get(key)
    if cached is not None:
        return cached
    sources = split_sources(split) + (list(package_sources()) if package_docs else [])
    ids: list[int] = []
    separator = lm.encode("\n\n")
    for _name, text in sources:
        ids.extend(lm.encode(text))
        ids.extend(separator)
    result = (ids, tuple(name for name, _ in sources))
    logger.info("filler stream %s: %d sources, %d tokens", split, len(sources), len(ids))
    with _STREAMS_LOCK:
        _STREAMS[key] = result
    return result


def _filler(stream: list[int], rng: random.Random, n: int) -> list[int]:
    """``n`` consecutive tokens from a random place of the stream (wrapping around)."""
    if n <= 0:
        return []
    start = rng.randrange(len(stream))
    out = stream[start : start + n]
    while len(out) < n:
        out += stream[: n - len(out)]
    return out


# ---------------------------------------------------------------------------- vocabularies for facts
_NAMES = ("Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena",
          "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yara")
_OBJECTS = ("red notebook", "silver key", "old telescope", "blue bicycle", "violin", "chess set", "green lamp",
            "wooden box", "map collection", "brass compass", "umbrella", "laptop")
_PLACES = ("Lisbon", "Nairobi", "Oslo", "Kyoto", "Lima", "Cairo", "Dublin", "Hanoi", "Quito", "Tbilisi", "Perth",
           "Montreal", "Seville", "Bergen", "Accra", "Porto")
_COLOURS = ("amber", "crimson", "teal", "violet", "ochre", "indigo", "scarlet", "olive", "cobalt", "magenta")
# Sites of the ``codes`` task; none is a place the quality bench's rag-qa asks about.
_SITES = ("the boiler room", "the south pier", "the paint shop", "the bell tower", "the cold store",
          "the print room", "the rail yard", "the fire station", "the water tower", "the quarry office",
          "the tool shed", "the coach house", "the gate lodge", "the loading bay", "the hay barn",
          "the dye works", "the ferry terminal", "the brick kiln", "the greenhouse", "the gun room")
_PROJECTS = ("Falcon", "Granite", "Harbor", "Juniper", "Lantern", "Meridian", "Nimbus", "Orchid", "Quartz")


def _code(rng: random.Random, n: int = 5) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


class TaskBuilder:
    """Builds examples of every task for one model and split; stateless apart from cached token ids."""

    def __init__(self, lm: LoadedModel, split: Split, package_docs: bool = False) -> None:
        from beacon_rag.segments import render_glue

        self.lm, self.split = lm, split
        self.stream, self.source_names = filler_stream(lm, split, package_docs)
        self.user_glue = render_glue(lm, ["user"], add_generation_prompt=True)
        # Every single-turn context opens with this chat header; tokenized once, not per example.
        self.header_ids = lm.encode(self.user_glue[0])
        eos = sorted(lm.eos_token_ids)
        # The end-of-turn token closes every answer, so the model also learns to stop.
        end = lm.tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in lm.tokenizer.get_vocab() else None
        self.end_ids = [end] if isinstance(end, int) else eos[:1]

    # -------------------------------------------------------------- helpers
    def _qa(self, task: str, body: list[int], question: str, answer_text: str, answer: str,
            meta: dict[str, object] | None = None, body_starts: Sequence[int] = ()) -> Example:
        """Chat-format a single-turn QA example: header + body compressed, question + answer plain.

        ``body_starts`` are segment starts inside ``body``; the body itself starts one (the chat
        header is a segment of its own in the engine, as the system turn is)."""
        prompt = self.lm.encode("\n\n" + question + self.user_glue[1])
        target = self.lm.encode(answer_text) + self.end_ids
        head = len(self.header_ids)
        starts = tuple(sorted({head, *(head + start for start in body_starts if 0 < start < len(body))}))
        return Example(task, self.header_ids + body, prompt, target, answer, dict(meta or {}),
                       answer_span(self.lm, answer_text, answer), starts if body else ())

    def _hide(self, rng: random.Random, filler_tokens: int, needles: Sequence[list[int]]) -> list[int]:
        """Filler with each needle inserted at a random token position (order kept)."""
        filler = _filler(self.stream, rng, max(filler_tokens, 0))
        cuts = sorted(rng.randint(0, len(filler)) for _ in needles)
        out: list[int] = []
        previous = 0
        for cut, needle in zip(cuts, needles):
            out += filler[previous:cut] + needle
            previous = cut
        return out + filler[previous:]

    def _budget(self, context_tokens: int, *pieces: list[int]) -> int:
        used = len(self.header_ids) + sum(len(p) for p in pieces)
        return context_tokens - used

    # -------------------------------------------------------------- tasks
    def lm_example(self, rng: random.Random, context_tokens: int, target_tokens: int) -> Example:
        """Plain text: the next ``target_tokens`` tokens after ``context_tokens`` of documentation."""
        ids = _filler(self.stream, rng, context_tokens + target_tokens)
        return Example("lm", ids[:context_tokens], [], ids[context_tokens:])

    def passkey(self, rng: random.Random, context_tokens: int) -> Example:
        key = str(rng.randint(10000, 99999))
        needle = self.lm.encode(f"\nThe pass key is {key}. Remember it. {key} is the pass key.\n")
        body = self._hide(rng, self._budget(context_tokens, needle), [needle])
        return self._qa("passkey", body, "What is the pass key?", f"The pass key is {key}.", key)

    def kv(self, rng: random.Random, context_tokens: int) -> Example:
        pairs = [(_code(rng), _code(rng)) for _ in range(rng.randint(3, 8))]
        needles = [self.lm.encode(f"\nRecord: key {k} has value {v}.\n") for k, v in pairs]
        body = self._hide(rng, self._budget(context_tokens, *needles), needles)
        key, value = rng.choice(pairs)
        return self._qa("kv", body, f"What is the value of key {key}?", f"The value of key {key} is {value}.", value)

    def _fact(self, rng: random.Random, name: str) -> tuple[str, str, str, str]:
        kind = rng.randrange(3)
        if kind == 0:
            obj, place = rng.choice(_OBJECTS), rng.choice(_PLACES)
            return (f"{name} keeps the {obj} in {place}.", f"Where does {name} keep the {obj}?",
                    f"{name} keeps the {obj} in {place}.", place)
        if kind == 1:
            colour = rng.choice(_COLOURS)
            return (f"The favourite colour of {name} is {colour}.", f"What is the favourite colour of {name}?",
                    f"The favourite colour of {name} is {colour}.", colour)
        project, number = rng.choice(_PROJECTS), str(rng.randint(100, 999))
        return (f"{name} works on project {project} in room {number}.", f"In which room does {name} work?",
                f"{name} works in room {number}.", number)

    def fact(self, rng: random.Random, context_tokens: int) -> Example:
        names = rng.sample(_NAMES, rng.randint(1, 4))
        facts = [self._fact(rng, name) for name in names]
        needles = [self.lm.encode("\n" + f[0] + "\n") for f in facts]
        body = self._hide(rng, self._budget(context_tokens, *needles), needles)
        _stmt, question, answer_text, answer = rng.choice(facts)
        return self._qa("fact", body, question, answer_text, answer)

    def _documents(self, rng: random.Random, context_tokens: int, heads: Sequence[list[int]],
                   needles: Sequence[list[int]], titled: bool = False) -> tuple[list[int], list[int]]:
        """One document per head: filler with its needle hidden, lengths summing to ``context_tokens``.

        Also returns where each document starts, as segment starts: the engine caches each document
        on its own (``rag_messages``). A head that is a separator ("Documents:", a blank line) is
        not part of the document that follows it; a ``titled`` head ("Document 2:") is."""
        count = len(heads)
        budget = self._budget(context_tokens, *heads, *needles)
        per = max(budget // count, 0)
        body: list[int] = []
        starts: list[int] = []
        for i, (head, needle) in enumerate(zip(heads, needles)):
            extra = max(budget - per * count, 0) if i == count - 1 else 0  # the rounding, so lengths are exact
            starts.append(len(body) if titled else len(body) + len(head))
            body += head + self._hide(rng, per + extra, [needle])
        return body, starts

    def multidoc(self, rng: random.Random, context_tokens: int) -> Example:
        """Several short documents, one fact in each; the question is about one of them (RAG-like)."""
        count = rng.randint(3, 6)
        names = rng.sample(_NAMES, count)
        facts = [self._fact(rng, name) for name in names]
        heads = [self.lm.encode(f"{'' if i == 0 else chr(10) * 2}Document {i + 1}:\n") for i in range(count)]
        needles = [self.lm.encode("\n" + f[0] + "\n") for f in facts]
        body, starts = self._documents(rng, context_tokens, heads, needles, titled=True)
        pick = rng.randrange(count)
        _stmt, question, answer_text, answer = facts[pick]
        return self._qa("multidoc", body, question, answer_text, answer, {"document": pick + 1}, starts)

    def codes(self, rng: random.Random, context_tokens: int) -> Example:
        """Retrieved documents laid out as the RAG prompt lays them out, a 4-digit access code in each.

        ``multidoc`` answers are words a model half-guesses from its prior (a city, a colour); the
        quality bench's rag-qa asks for digits, which only the memory can supply, and which a
        plug-in trained on ``multidoc`` alone did not learn to carry across documents.
        """
        count = rng.randint(3, 5)
        sites = rng.sample(_SITES, count)
        numbers = [str(n) for n in rng.sample(range(1000, 10000), count)]
        heads = [self.lm.encode("Documents:\n\n" if i == 0 else "\n\n") for i in range(count)]
        needles = [self.lm.encode(f"\nThe access code for {site} is {number}.\n") for site, number in zip(sites, numbers)]
        body, starts = self._documents(rng, context_tokens, heads, needles)
        pick = rng.randrange(count)
        site, number = sites[pick], numbers[pick]
        return self._qa("codes", body, f"Question: What is the access code for {site}?",
                        f"The access code for {site} is {number}.", number, {"document": pick + 1}, starts)

    def multiturn(self, rng: random.Random, context_tokens: int) -> Example:
        """A chat history (compressed) in which the user once said something; asked for it later."""
        from beacon_rag.segments import render_glue

        turns = rng.randint(2, 4)
        secret_turn = rng.randrange(turns)
        code = _code(rng, 6)
        roles = ["user", "assistant"] * turns + ["user"]
        glue = render_glue(self.lm, roles, add_generation_prompt=True)
        fixed = sum(len(self.lm.encode(g)) for g in glue) + 40
        per = max((context_tokens - fixed) // (2 * turns), 8)
        ids: list[int] = []
        # The engine caches every message as a segment: its content and the glue after it (the
        # first one also the glue before it).
        starts: list[int] = []
        for turn in range(turns):
            ids += self.lm.encode(glue[2 * turn])
            starts.append(len(ids))
            user = self.lm.encode("Please summarise this passage:\n") + _filler(self.stream, rng, per)
            if turn == secret_turn:
                user += self.lm.encode(f"\nAlso, remember my code word: {code}.")
            ids += user
            ids += self.lm.encode(glue[2 * turn + 1])
            starts.append(len(ids))
            # The last reply takes up what the per-turn rounding left, so the length is as asked.
            short = context_tokens - len(ids) - per
            ids += _filler(self.stream, rng, per + (max(short, 0) if turn == turns - 1 else 0))
        prompt = self.lm.encode(glue[2 * turns] + "What was the code word I asked you to remember?"
                                + glue[2 * turns + 1])
        answer_text = f"Your code word is {code}."
        target = self.lm.encode(answer_text) + self.end_ids
        return Example("multiturn", ids, prompt, target, code, {"turn": secret_turn},
                       answer_span(self.lm, answer_text, code), tuple(s for s in starts[1:] if s < len(ids)))

    def recall(self, rng: random.Random, context_tokens: int, target_tokens: int) -> Example:
        """Quote ``target_tokens`` tokens of the compressed context, from where a given cue ends.

        An autoencoding objective (as the in-context autoencoder pretrains its memory slots): every
        target token must come from the memory, at any place in it, so each example teaches exact
        recall as densely as a pass key teaches five digits. The documentation filler carries
        a few numbers; hidden reference numbers add more, and half the quotes start at one,
        because exact digit strings are what compressed memories lose first.
        """
        cue_tokens = 8
        span = max(min(target_tokens, context_tokens // 4), 1)
        numbers = [self.lm.encode(f"\n(ref. {rng.randint(1000, 999999)})\n") for _ in range(rng.randint(2, 5))]
        while numbers and self._budget(context_tokens, *numbers) < 0:
            numbers.pop()  # a short context holds fewer numbers rather than growing past its length
        body = self._hide(rng, self._budget(context_tokens, *numbers), numbers)
        context = self.header_ids + body
        last_start = len(context) - span
        first_start = len(self.header_ids) + cue_tokens
        if last_start < first_start:
            raise ValueError(f"recall needs a context longer than {first_start + span} tokens, got {len(context)}")
        starts: list[int] = []
        if rng.random() < 0.5:
            # Start right after "(ref." so the quote opens with the digits and the cue names the place.
            lead = self.lm.encode("\n(ref.")
            starts = [i + len(lead) for i in range(len(self.header_ids), len(context) - len(lead))
                      if context[i : i + len(lead)] == lead and first_start <= i + len(lead) <= last_start]
        start = rng.choice(starts) if starts else rng.randint(first_start, last_start)
        quote = context[start : start + span]
        prompt = (self.lm.encode("\n\nQuote the text above exactly, going on from these words:\n")
                  + context[start - cue_tokens : start] + self.lm.encode(self.user_glue[1]))
        return Example("recall", context, prompt, quote, self.lm.decode(quote), {"start": start},
                       (0, len(quote)))

    def build(self, task: str, rng: random.Random, context_tokens: int, target_tokens: int = 32) -> Example:
        if task == "lm":
            return self.lm_example(rng, context_tokens, target_tokens)
        if task == "recall":
            return self.recall(rng, context_tokens, target_tokens)
        method = {"passkey": self.passkey, "kv": self.kv, "fact": self.fact, "multidoc": self.multidoc,
                  "codes": self.codes, "multiturn": self.multiturn}.get(task)
        if method is None:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TRAIN_TASKS)}")
        return method(rng, context_tokens)


_BUILDERS: dict[tuple[int, str, bool], TaskBuilder] = {}


def builder(lm: LoadedModel, split: Split, package_docs: bool = False) -> TaskBuilder:
    key = (id(lm), split, package_docs)
    if key not in _BUILDERS:
        _BUILDERS[key] = TaskBuilder(lm, split, package_docs)
    return _BUILDERS[key]


def _rng(seed: int, split: Split, index: int, salt: str = "") -> random.Random:
    # String seeds are hashed with SHA-512 by ``random``: stable across processes and Python runs.
    offset = HELDOUT_SEED_OFFSET if split == "heldout" else 0
    return random.Random(f"beacon-data|{split}|{seed + offset}|{index}|{salt}")


def make_task_examples(lm: LoadedModel, task: str, split: Split, n: int, context_tokens: int,
                       seed: int = 0, target_tokens: int = 32) -> list[Example]:
    """``n`` examples of one task, deterministic in ``(task, split, n, context_tokens, seed)``.

    ``task`` is one of ``passkey``, ``rag-qa`` (several documents, a question about one), ``multiturn``
    (recall from an earlier chat turn), ``lm-loss`` (plain text; the target is the next
    ``target_tokens`` tokens), or the training names ``kv``, ``fact``, ``multidoc``, ``codes`` (documents
    laid out as the RAG prompt lays them out, a 4-digit access code in each), ``lm``, ``recall``.
    Returns a list of ``Example`` (see its docstring: ``context_ids`` to compress, then
    ``prompt_ids`` + ``target_ids`` through the plain model; ``answer`` for exact match). Use
    ``split="heldout"`` for evaluation: its filler comes from sources training never sees and its
    seeds never coincide with training ones. Context lengths are about ``context_tokens`` (within a
    few tokens; ``multiturn`` rounds per turn).
    """
    name = BENCH_TASKS.get(task)
    if name is None:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(sorted(BENCH_TASKS))}")
    if n < 0 or context_tokens < 16:
        raise ValueError(f"need n >= 0 and context_tokens >= 16 (got {n}, {context_tokens})")
    build = builder(lm, split)
    return [build.build(name, _rng(seed, split, i, name), context_tokens, target_tokens) for i in range(n)]


@dataclass(frozen=True)
class Mixture:
    """The training mixture: task weights and length ranges (contexts drawn uniformly per example)."""

    weights: dict[str, float] = field(default_factory=lambda: {
        "lm": 0.3, "passkey": 0.12, "kv": 0.14, "fact": 0.14, "multidoc": 0.15, "multiturn": 0.15})
    context_tokens: tuple[int, int] = (512, 1024)
    target_tokens: int = 48
    package_docs: bool = False  # filler text also from installed packages' READMEs (``filler_stream``)


class TrainingData:
    """An endless, indexable stream of mixed examples: ``data[i]`` depends only on (seed, split, i).

    Indexable rather than iterable so that resuming from step ``k`` needs no saved generator state.
    """

    def __init__(self, lm: LoadedModel, split: Split = "train", seed: int = 0,
                 mixture: Mixture | None = None) -> None:
        self.lm, self.split, self.seed = lm, split, seed
        self.mixture = mixture or Mixture()
        unknown = set(self.mixture.weights) - set(TRAIN_TASKS)
        if unknown:
            raise ValueError(f"unknown tasks in mixture: {sorted(unknown)}")
        self.builder = builder(lm, split, self.mixture.package_docs)

    def _task(self, rng: random.Random) -> str:
        tasks = sorted(self.mixture.weights)
        return rng.choices(tasks, weights=[self.mixture.weights[t] for t in tasks])[0]

    def __getitem__(self, index: int) -> Example:
        rng = _rng(self.seed, self.split, index, "mix")
        task = self._task(rng)
        low, high = self.mixture.context_tokens
        return self.builder.build(task, rng, rng.randint(low, high), self.mixture.target_tokens)

    def batch(self, index: int, size: int) -> list[Example]:
        """Batch ``index``: ``size`` examples of mixed tasks sharing one drawn context length.

        One length per batch lets the rows share the beacon window loop (``batch_losses``); every
        task builds its context to exactly the requested length. A batch of one is ``[self[index]]``,
        so runs without batching keep the example stream they had before batches existed.
        """
        if size == 1:
            return [self[index]]
        rng = _rng(self.seed, self.split, index, f"batch|{size}")
        low, high = self.mixture.context_tokens
        length = rng.randint(low, high)
        return [self.builder.build(self._task(rng), rng, length, self.mixture.target_tokens) for _ in range(size)]
