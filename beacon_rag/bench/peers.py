"""``beacon-rag bench peers``: quality at matched kept-slot budgets, beacon-rag against its peers.

The question a RAG user asks: if I keep only 1/R of the context in the cache, which method still
answers? One run, one model (the embedded SmolLM2 unless ``--model``), the *same token ids* for
every method, greedy decoding, the same answer check:

* ``full``: exact KV of the whole prompt (the ceiling); ``none``: the question alone (the floor);
* ``beacon-xR``: the shipped trained beacon plug-in at ratio R, through the engine (every cached
  segment compressed, the question tail live), chained placement;
* placement (multi-document tasks): ``independent`` (each document encoded after the shared
  prefix only), ``independent+repairK`` (first K tokens of later documents re-encoded), and beacon
  at ``--placement-ratio`` placed independently;
* ``kvpress-<press>-xR``: NVIDIA kvpress presses (Knorm, ExpectedAttention, SnapKV, StreamingLLM)
  with ``compression_ratio = 1 - 1/R``, compressing the same cached part of the prompt in one
  prefill from position 0 (kvpress's own convention: later positions continue from the
  uncompressed length), question-agnostic like a cache must be (SnapKV observes the last 64
  context tokens, not the question);
* ``llmlingua-xR``: LLMLingua (token-level, SmolLM2 as its scorer) compressing every cacheable
  text alone at ``rate = 1/R`` without the question; the compressed prompt then runs exactly.
  Its kept share is measured (LLMLingua's rate is a target in GPT tokens, not a guarantee).

kvpress and LLMLingua need older transformers, so they run in ``.venv-peers``
(``scripts/setup_peers.sh``) through ``peers_worker.py``, fed token ids as JSON; the worker also
replays ``full`` so the run checks that both environments give the same answers
(``worker_full_agreement``).

Tasks: ``passkey``, ``rag-qa``, ``multiturn`` and ``lm-loss`` are those of ``bench quality`` (same
generators, held-out text); ``shared-context`` is in the spirit of SCBench's multi-request mode:
one context of several documents, then one request per document asking for its fact; cached
methods compress the context once and answer every request from it (the engine from its RAM tier,
kvpress from one compressed cache copied per request, LLMLingua from one compressed text).

Scores: accuracy for QA (``ratio_to_full`` = accuracy / full accuracy); for ``lm-loss`` the mean
loss, ``gap_recovered`` and ``ratio_to_full = exp(full - loss)``. ``kept_slots_per_token`` is kept
cache slots over context tokens, measured per method.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from beacon_rag.bench.quality import (
    PLACES,
    QAExample,
    answer_correct,
    build_compressor,
    coded_documents,
    continuation_loss,
    gap_recovered,
    make_examples,
)
from beacon_rag.bench.report import markdown_table
from beacon_rag.compressors.exact import ExactCompressor
from beacon_rag.engine import Engine, rag_messages
from beacon_rag.kv import KVContext
from beacon_rag.models import LoadedModel, load_model
from beacon_rag.segments import Block, Message, build_segments

logger = logging.getLogger(__name__)

TASKS = ("passkey", "rag-qa", "multiturn", "lm-loss", "shared-context")
PRESSES = ("knorm", "expected_attention", "snapkv", "streaming_llm")
PRESS_LABELS = {"knorm": "Knorm", "expected_attention": "ExpectedAttention", "snapkv": "SnapKV",
                "streaming_llm": "StreamingLLM"}
DEFAULT_CONTEXT_TOKENS = {"passkey": 1024, "rag-qa": 768, "multiturn": 768, "lm-loss": 1024,
                          "shared-context": 800}
ENGINE_MEMORY_BYTES = 256 << 20
WORKER = Path(__file__).with_name("peers_worker.py")
REPO = Path(__file__).resolve().parents[2]


def default_peers_python() -> Path:
    """The python of the peers environment: ``$BEACON_RAG_PEERS_PYTHON`` or ``<repo>/.venv-peers``."""
    override = os.environ.get("BEACON_RAG_PEERS_PYTHON")
    return Path(override) if override else REPO / ".venv-peers" / "bin" / "python"


def model_folder(lm: LoadedModel) -> Path:
    """The HF folder the model was loaded from (for a GGUF: its converted copy), for the worker."""
    folder = Path(str(getattr(lm.model, "name_or_path", "") or ""))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{lm.name}: no model folder with config.json to hand to the peers worker "
                                f"(got {folder!s})")
    return folder


# --------------------------------------------------------------------------- examples
def make_shared_examples(lm: LoadedModel, contexts: int, context_tokens: int, docs: int,
                         seed: int = 0) -> list[QAExample]:
    """``contexts`` shared contexts of ``docs`` documents; one request per document (its code).

    Requests of one context are consecutive and share every cached segment, so a cache built for
    the first serves the others (what SCBench measures: reuse across follow-up requests).
    """
    if not 1 <= docs <= len(PLACES):
        raise ValueError(f"docs must be between 1 and {len(PLACES)}, got {docs}")
    rng = random.Random(f"shared-context-{seed}")
    per = context_tokens // docs
    examples = []
    for _ in range(contexts):
        places = rng.sample(PLACES, docs)
        codes = [str(c) for c in rng.sample(range(1000, 10000), docs)]
        documents = coded_documents(lm, rng, places, codes, per)
        for target in rng.sample(range(docs), docs):  # ask in an order unrelated to the layout
            question = f"What is the access code for {places[target]}?"
            examples.append(QAExample(rag_messages(question, documents), rag_messages(question, []), codes[target],
                                      documents[target]))
    return examples


def cacheable_texts(messages: Sequence[Message]) -> list[str]:
    """Texts a text-level compressor may shrink: documents, and earlier turns of a conversation.

    Kept as they are: the system prompt and instruction blocks (shared, short), and the last
    user message's own text (the question), as for the KV methods, which keep the tail live.
    """
    texts: list[str] = []
    last = len(messages) - 1
    for index, message in enumerate(messages):
        if message.role == "system":
            continue
        if isinstance(message.content, str):
            if index != last:
                texts.append(message.content)
        else:
            texts.extend(b.text for b in message.content if b.document)
    return texts


def replace_texts(messages: Sequence[Message], mapping: dict[str, str]) -> list[Message]:
    """``messages`` with every text of :func:`cacheable_texts` swapped for ``mapping[text]``."""
    out: list[Message] = []
    last = len(messages) - 1
    for index, message in enumerate(messages):
        if message.role == "system":
            out.append(message)
        elif isinstance(message.content, str):
            out.append(message if index == last else Message(message.role, mapping[message.content] or " "))
        else:
            out.append(Message(message.role, [
                Block(_keep_layout(b.text, mapping[b.text]), document=True, cache=b.cache, id=b.id) if b.document
                else b for b in message.content]))
    return out


def _keep_layout(original: str, compressed: str) -> str:
    """A compressed document keeps the blank line that separates documents in the prompt."""
    tail = original[len(original.rstrip()):]
    return (compressed.strip() or ".") + tail


# --------------------------------------------------------------------------- worker
def run_worker(python: Path, request: dict[str, Any], label: str, timeout: float | None = None) -> subprocess.Popen:
    """Start the peers worker on ``request`` (returns at once; :func:`collect` waits)."""
    if not python.is_file():
        raise FileNotFoundError(f"{python}: the peers environment is missing; create it with scripts/setup_peers.sh")
    folder = Path(tempfile.mkdtemp(prefix=f"beacon-rag-peers-{label}-"))
    (folder / "request.json").write_text(json.dumps(request))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH="")
    log = open(folder / "worker.log", "w")  # noqa: SIM115 - the worker writes to it until collect() closes it
    process = subprocess.Popen([str(python), str(WORKER), str(folder / "request.json"), str(folder / "result.json")],
                               stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(folder))
    process.folder = folder  # type: ignore[attr-defined]
    process.log_file = log  # type: ignore[attr-defined]
    return process


def collect(process: subprocess.Popen, timeout: float | None = None) -> dict[str, Any]:
    """Wait for a worker and read its result; a failure raises with the end of its log."""
    folder: Path = process.folder  # type: ignore[attr-defined]
    code = process.wait(timeout=timeout)
    process.log_file.close()  # type: ignore[attr-defined]
    if code != 0 or not (folder / "result.json").is_file():
        tail = (folder / "worker.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"peers worker failed (exit {code}); log {folder / 'worker.log'}:\n{tail}")
    return json.loads((folder / "result.json").read_text())


# --------------------------------------------------------------------------- the run
@dataclass
class _Cond:
    """One method's results on one task: per-example scores and kept / raw slot totals."""

    name: str
    family: str
    ratio: float | None = None
    placement: str = "chained"

    def __post_init__(self) -> None:
        self.scores: list[float] = []
        self.slots = 0
        self.raw = 0
        self.outputs: list[str] = []


def _task_examples(task: str, lm: LoadedModel, args: argparse.Namespace, context_tokens: int) -> list[Any]:
    if task == "shared-context":
        return make_shared_examples(lm, args.shared_contexts, context_tokens, args.shared_docs, args.seed)
    return make_examples(task, lm, args.examples, context_tokens, args.seed, args.docs, args.continuation_tokens)


def _engine_answer(engine: Engine, messages: list[Message], expected: str, cond: _Cond, max_tokens: int) -> Any:
    result = engine.generate(messages, max_new_tokens=max_tokens)
    cond.scores.append(float(answer_correct(result.text, expected)))
    cond.slots += sum(u.slots for u in result.segments)
    cond.raw += sum(u.raw_tokens for u in result.segments)
    cond.outputs.append(result.text)
    return result


def _split(lm: LoadedModel, messages: list[Message]) -> tuple[list[int], list[int]]:
    """The cached part and the live tail of a prompt, exactly as the engine cuts it."""
    segments, tail = build_segments(lm, messages)
    return [t for s in segments for t in s.token_ids], list(tail.token_ids)


def run(args: argparse.Namespace, lm: LoadedModel | None = None) -> dict[str, Any]:
    """Every method on every task of ``--tasks``; see the module docstring for what is compared."""
    started = time.perf_counter()
    tasks = list(dict.fromkeys(args.tasks))
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; use {', '.join(TASKS)}")
    ratios = list(dict.fromkeys(args.ratios))
    for ratio in ratios:
        if ratio < 2:
            raise ValueError(f"ratios must be integers >= 2, got {ratio}")
    presses = list(dict.fromkeys(args.presses))
    for press in presses:
        if press not in PRESSES:
            raise ValueError(f"unknown press {press!r}; use {', '.join(PRESSES)}")
    if args.examples < 1 or args.shared_contexts < 1:
        raise ValueError("--examples and --shared-contexts must be >= 1")
    python = Path(args.peers_python) if args.peers_python else default_peers_python()
    use_peers = not args.no_peers
    if use_peers and not python.is_file():
        raise FileNotFoundError(f"{python}: the peers environment is missing; create it with "
                                "scripts/setup_peers.sh (or pass --no-peers)")
    lm = lm if lm is not None else load_model(args.model)

    # 1. examples and the exact token split every method gets
    data: dict[str, dict[str, Any]] = {}
    lingua_texts: list[str] = []
    jobs: list[dict[str, Any]] = []
    for task in tasks:
        context_tokens = (args.context_tokens or {}).get(task, DEFAULT_CONTEXT_TOKENS[task])
        examples = _task_examples(task, lm, args, context_tokens)
        entry: dict[str, Any] = {"examples": examples, "context_tokens": context_tokens, "jobs": []}
        for example in examples:
            if task == "lm-loss":
                job = {"kind": "loss", "context_ids": example.context_ids, "continuation_ids": example.continuation_ids}
                lingua_texts.append(lm.tokenizer.decode(example.context_ids))
            else:
                context_ids, tail_ids = _split(lm, example.messages)
                job = {"kind": "generate", "context_ids": context_ids, "tail_ids": tail_ids,
                       "max_new_tokens": args.max_tokens}
                lingua_texts.extend(cacheable_texts(example.messages))
            entry["jobs"].append(len(jobs))
            jobs.append(job)
        data[task] = entry
    lingua_texts = list(dict.fromkeys(lingua_texts))

    # 2. the peers, in their own environment, while this process measures beacon-rag
    folder = str(model_folder(lm))
    eos = sorted(lm.eos_token_ids)
    press_specs = [{"name": "full"}] + [{"name": p, "ratio": r} for p in presses for r in ratios]
    lingua_proc = press_proc = None
    if use_peers and not args.no_llmlingua:
        lingua_proc = run_worker(python, {"model": folder, "eos_ids": eos,
                                          "lingua": {"ratios": ratios, "texts": lingua_texts}}, "lingua")
    if use_peers and presses:
        press_proc = run_worker(python, {"model": folder, "eos_ids": eos, "presses": press_specs, "jobs": jobs},
                                "kvpress")

    try:
        return _finish(args, lm, tasks, ratios, presses, data, lingua_texts, lingua_proc, press_proc, started)
    finally:
        for process in (lingua_proc, press_proc):  # a failure here must not leave workers running
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def _finish(args: argparse.Namespace, lm: LoadedModel, tasks: list[str], ratios: list[int], presses: list[str],
            data: dict[str, dict[str, Any]], lingua_texts: list[str], lingua_proc: subprocess.Popen | None,
            press_proc: subprocess.Popen | None, started: float) -> dict[str, Any]:
    """beacon-rag's own methods in this process, then the peers' results, then the report."""
    results: dict[str, Any] = {}
    shipped_beacon = build_compressor("beacon", ratios[0], lm=lm).spec()  # what the default beacon rows run
    variants = beacon_variants(shipped_beacon)
    for task in tasks:
        results[task] = _run_native(lm, task, data[task], ratios, variants, args)

    # 3. LLMLingua: compressed texts back, then the same exact engine on the compressed prompts
    lingua_info: dict[str, Any] = {}
    if lingua_proc is not None:
        lingua = collect(lingua_proc)
        lingua_info = {"versions": lingua["versions"], "elapsed_s": lingua["lingua"]["elapsed_s"],
                       "kept_share": lingua["lingua"]["kept_share"], "rate": lingua["lingua"]["rate"]}
        for task in tasks:
            for ratio in ratios:
                mapping = dict(zip(lingua_texts, lingua["lingua"]["compressed"][str(float(ratio))]))
                cond = _run_lingua(lm, task, data[task], mapping, ratio, args)
                results[task]["conds"].append(cond)

    # 4. kvpress answers, scored here with the same check
    press_info: dict[str, Any] = {}
    agreement: dict[str, float] = {}
    if press_proc is not None:
        pressed = collect(press_proc)
        press_info = {"versions": pressed["versions"],
                      "elapsed_s": {json.dumps(p["press"], sort_keys=True): p["elapsed_s"] for p in pressed["presses"]}}
        for task in tasks:
            examples = data[task]["examples"]
            for block in pressed["presses"]:
                spec = block["press"]
                entries = [block["entries"][j] for j in data[task]["jobs"]]
                if spec["name"] == "full":
                    agreement[task] = _agreement(task, entries, results[task])
                    continue
                cond = _Cond(f"kvpress-{spec['name']}-x{int(spec['ratio'])}", f"kvpress {PRESS_LABELS[spec['name']]}",
                             float(spec["ratio"]))
                for example, e in zip(examples, entries):
                    if task == "lm-loss":
                        cond.scores.append(e["loss"])
                    else:
                        cond.scores.append(float(answer_correct(e["text"], example.answer)))
                        cond.outputs.append(e["text"])
                    cond.slots += e["kept_slots"]
                    cond.raw += e["context_tokens"]
                results[task]["conds"].append(cond)

    report: dict[str, Any] = {
        "bench": "peers",
        "model": lm.name,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores ({platform.processor() or 'cpu'}), shared",
        "settings": {
            "ratios": ratios, "presses": presses, "examples": args.examples, "shared_contexts": args.shared_contexts,
            "shared_docs": args.shared_docs, "docs": args.docs, "max_new_tokens": args.max_tokens,
            "continuation_tokens": args.continuation_tokens, "repair_tokens": args.repair_tokens,
            "placement_ratio": args.placement_ratio, "seed": args.seed, "decoding": "greedy",
            "beacon": shipped_beacon,
        },
        "peers": {"kvpress": press_info, "llmlingua": lingua_info},
        "worker_full_agreement": agreement,
        "tasks": {},
    }
    for task in tasks:
        report["tasks"][task] = _summarise(task, data[task], results[task], args.details)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    if getattr(args, "out", None):
        Path(args.out).write_text(json.dumps(report, indent=1))
        plot(report, Path(args.out).with_suffix(".png"))
        logger.info("wrote %s and its plot", args.out)
    return report


def beacon_variants(shipped: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(label, family, keep) of the beacon rows: the shipped plug-in as it runs by default (its
    compressor spec is ``shipped``), and, when it keeps some tokens verbatim (which adds slots),
    beacons alone as well.

    Why both: kept tokens put the default beacon row above 1/R kept slots per token, so the
    beacons-only row is the one that matches the peers' budget exactly.
    """
    variants: list[tuple[str, str, str | None]] = [("beacon", "beacon-rag beacon", None)]
    if shipped.get("keep"):
        variants.append(("beacon+none", "beacon-rag beacon, no kept tokens", "none"))
    return variants


def _run_native(lm: LoadedModel, task: str, entry: dict[str, Any], ratios: list[int],
                variants: list[tuple[str, str, str | None]], args: argparse.Namespace) -> dict[str, Any]:
    """full, none, beacon at each ratio and (multi-document tasks) placement variants, in-process."""
    examples = entry["examples"]
    full, none = _Cond("full", "full context"), _Cond("none", "no context")
    beacon_runs = [(_Cond(f"{label}-x{r}", family, float(r)), build_compressor("beacon", r, lm=lm, keep=keep))
                   for label, family, keep in variants for r in ratios]
    conds = [full, none, *(cond for cond, _ in beacon_runs)]
    lengths: list[int] = []
    if task == "lm-loss":
        exact = ExactCompressor()
        for example in tqdm(examples, desc=f"peers {task}", unit="example"):
            for cond, compressor in [(full, exact), *beacon_runs]:
                kv = compressor.compress(lm, example.context_ids, KVContext(lm))
                context = KVContext(lm)
                context.append(kv)
                cond.scores.append(continuation_loss(lm, context, example.continuation_ids))
                cond.slots += kv.slots
                cond.raw += kv.raw_tokens
            none.scores.append(continuation_loss(lm, None, example.continuation_ids))
            lengths.append(len(example.context_ids))
        return {"conds": conds, "lengths": lengths}

    def engine(compressor: Any, placement: str = "chained", repair: int = 0) -> Engine:
        return Engine(lm, compressor=compressor, persist=False, memory_bytes=ENGINE_MEMORY_BYTES,
                      placement=placement, repair_tokens=repair)

    full_engine = engine(ExactCompressor())
    engines = [(full, full_engine)] + [(cond, engine(compressor)) for cond, compressor in beacon_runs]
    if task in ("rag-qa", "shared-context"):
        indep = _Cond("independent", "placement", None, "independent")
        conds.append(indep)
        engines.append((indep, engine(ExactCompressor(), "independent")))
        if args.repair_tokens:
            repair = _Cond(f"independent+repair{args.repair_tokens}", "placement", None, "independent")
            conds.append(repair)
            engines.append((repair, engine(ExactCompressor(), "independent", args.repair_tokens)))
        if args.placement_ratio:
            r = args.placement_ratio
            bind = _Cond(f"beacon-x{r}-independent", "beacon-rag beacon", float(r), "independent")
            conds.append(bind)
            engines.append((bind, engine(build_compressor("beacon", r, lm=lm), "independent")))
    for example in tqdm(examples, desc=f"peers {task}", unit="example"):
        for cond, eng in engines:
            _engine_answer(eng, example.messages, example.answer, cond, args.max_tokens)
        _engine_answer(full_engine, example.none_messages, example.answer, none, args.max_tokens)
        lengths.append(len(full_engine.prompt_token_ids(example.messages)))
    return {"conds": conds, "lengths": lengths, "engine": full_engine}


def _run_lingua(lm: LoadedModel, task: str, entry: dict[str, Any], mapping: dict[str, str], ratio: int,
                args: argparse.Namespace) -> _Cond:
    cond = _Cond(f"llmlingua-x{ratio}", "LLMLingua (text)", float(ratio))
    if task == "lm-loss":
        exact = ExactCompressor()
        for example in entry["examples"]:
            compressed = lm.encode(mapping[lm.tokenizer.decode(example.context_ids)]) or example.context_ids[:1]
            kv = exact.compress(lm, compressed, KVContext(lm))
            context = KVContext(lm)
            context.append(kv)
            cond.scores.append(continuation_loss(lm, context, example.continuation_ids))
            cond.slots += kv.slots
            cond.raw += len(example.context_ids)
        return cond
    eng = Engine(lm, compressor=ExactCompressor(), persist=False, memory_bytes=ENGINE_MEMORY_BYTES)
    for example in tqdm(entry["examples"], desc=f"peers {task} llmlingua-x{ratio}", unit="example"):
        result = eng.generate(replace_texts(example.messages, mapping), max_new_tokens=args.max_tokens)
        cond.scores.append(float(answer_correct(result.text, example.answer)))
        cond.outputs.append(result.text)
        cond.slots += sum(u.slots for u in result.segments)
        # the budget is against the uncompressed prompt's cached tokens, as for every other method
        cond.raw += len(_split(lm, example.messages)[0])
    return cond


def _agreement(task: str, entries: list[dict[str, Any]], native: dict[str, Any]) -> float:
    """Share of examples where the worker's uncompressed replay matches the engine's full context.

    Generation: the same answer text. LM loss: within 1e-3 (two transformers versions, same math).
    """
    full = next(c for c in native["conds"] if c.name == "full")
    if task == "lm-loss":
        same = [abs(e["loss"] - s) < 1e-3 for e, s in zip(entries, full.scores)]
    else:
        same = [e["text"].strip() == o.strip() for e, o in zip(entries, full.outputs)]
    return sum(same) / len(same) if same else float("nan")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _summarise(task: str, entry: dict[str, Any], result: dict[str, Any], details: bool) -> dict[str, Any]:
    conds: list[_Cond] = result["conds"]
    full = next(c for c in conds if c.name == "full")
    none = next(c for c in conds if c.name == "none")
    full_score, none_score = _mean(full.scores), _mean(none.scores)
    methods: dict[str, Any] = {}
    for cond in conds:
        score = _mean(cond.scores)
        row: dict[str, Any] = {"family": cond.family, "ratio": cond.ratio, "placement": cond.placement,
                               "n": len(cond.scores)}
        if task == "lm-loss":
            row["loss"] = score
            row["ratio_to_full"] = math.exp(full_score - score)
            row["gap_recovered"] = gap_recovered(score, full_score, none_score)
        else:
            row["accuracy"] = score
            row["ratio_to_full"] = score / full_score if full_score else None
        # the question alone keeps no context at all (its system prompt is not context)
        row["kept_slots_per_token"] = 0.0 if cond is none else (cond.slots / cond.raw) if cond.raw else None
        if details and cond.outputs:
            row["outputs"] = cond.outputs
        methods[cond.name] = row
    out: dict[str, Any] = {
        "metric": "loss" if task == "lm-loss" else "accuracy",
        "n": len(entry["examples"]),
        "context_tokens": entry["context_tokens"],
        "mean_prompt_tokens": _mean([float(x) for x in result["lengths"]]),
        "methods": methods,
    }
    if task != "lm-loss" and details:
        out["expected"] = [e.answer for e in entry["examples"]]
    return out


# --------------------------------------------------------------------------- rendering
def _method_order(result: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for task in result["tasks"].values():
        for name in task["methods"]:
            if name not in names:
                names.append(name)

    def key(name: str) -> tuple[int, str, float]:
        for task in result["tasks"].values():
            row = task["methods"].get(name)
            if row:
                break
        rank = {"full": 0, "none": 99}.get(name)
        if rank is None:
            fam = row["family"]
            rank = 10 if fam.startswith("beacon") and row["placement"] == "chained" else \
                20 if row["placement"] != "chained" else 30 if fam.startswith("kvpress") else 40
        return (rank, row["family"], row["ratio"] or 0.0)

    return sorted(names, key=key)


def render_markdown(result: dict[str, Any]) -> str:
    """A markdown table: one row per method, one column per task (score, then kept share).

    QA cells are accuracy as a share of the examples; the lm-loss cell is the mean loss with the
    perplexity ratio to full context (1.00 = as good) in brackets. The last column is the kept
    slots per context token averaged over the tasks where the method ran.
    """
    tasks = list(result["tasks"])
    header = ["method", "kept / token"] + [
        f"{t} (n={result['tasks'][t]['n']}, ~{int(result['tasks'][t]['mean_prompt_tokens'])} tok)" for t in tasks]
    rows = []
    for name in _method_order(result):
        cells, kept = [], []
        for task in tasks:
            row = result["tasks"][task]["methods"].get(name)
            if row is None:
                cells.append("")
                continue
            if row.get("kept_slots_per_token") is not None:
                kept.append(row["kept_slots_per_token"])
            if "loss" in row:
                cells.append(f"{row['loss']:.3f} ({row['ratio_to_full']:.2f})")
            else:
                cells.append(f"{row['accuracy']:.2f}")
        kept_cell = f"{sum(kept) / len(kept):.3f}" if kept else ""
        rows.append([name, kept_cell, *cells])
    lines = markdown_table(header, rows)
    settings = result.get("settings", {})
    lines.append("")
    beacon = settings.get("beacon") or {}  # absent from results written before it was recorded
    plugin = ("; untrained beacon plug-in" if beacon.get("untrained") else
              f"; beacon plug-in {str(beacon['plugin'])[:12]}" if beacon.get("plugin") else "")
    kept = f", keeps {beacon['keep']} verbatim (beacon+none: beacons only)" if beacon.get("keep") else ""
    lines.append(f"Model {result.get('model')}, {result.get('machine')}{plugin}{kept}; "
                 f"greedy, {settings.get('max_new_tokens')} new "
                 f"tokens; QA cells: accuracy; lm-loss: mean loss (full-context perplexity / method's). "
                 f"Worker replay of full context agreed with the engine on "
                 + ", ".join(f"{t} {v:.0%}" for t, v in result.get("worker_full_agreement", {}).items())
                 + f". Run took {result.get('elapsed_s')} s.")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Score against kept slots per token, one panel per task, one line per method family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    colors: dict[str, Any] = {}  # one colour per method family across every panel
    palette = plt.get_cmap("tab10").colors
    for ax, task in zip(axes[0], tasks):
        info = result["tasks"][task]
        metric = "loss" if info["metric"] == "loss" else "accuracy"
        families: dict[str, list[tuple[float, float]]] = {}
        for name, row in info["methods"].items():
            if name in ("full", "none") or row.get("kept_slots_per_token") is None:
                continue
            # placement variants are separate methods at the same budget, not points of one curve
            label = name if row["family"] == "placement" else row["family"] if row["placement"] == "chained" \
                else f"{row['family']} ({row['placement']})"
            families.setdefault(label, []).append((row["kept_slots_per_token"], row[metric]))
        for label, points in sorted(families.items()):
            points.sort()
            color = colors.setdefault(label, palette[len(colors) % len(palette)])
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label, color=color)
        for name, style in (("full", "--"), ("none", ":")):
            if name in info["methods"]:
                ax.axhline(info["methods"][name][metric], linestyle=style, color="black", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("kept slots per context token")
        ax.set_ylabel("mean loss (lower is better)" if metric == "loss" else "accuracy")
        ax.set_title(f"{task} (n={info['n']})")
    seen: dict[str, Any] = {}
    for ax in axes[0]:
        handles, labels = ax.get_legend_handles_labels()
        for handle, label in zip(handles, labels):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(len(seen), 5), fontsize=8)
    fig.suptitle(f"Quality at matched kept-slot budgets ({result.get('model')})")
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI
def _context_tokens(text: str) -> dict[str, int]:
    """``--context-tokens passkey=1024,rag-qa=768``."""
    out: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        task, _, value = part.partition("=")
        if task not in TASKS or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"--context-tokens takes TASK=TOKENS pairs with TASK in {', '.join(TASKS)};"
                                             f" got {part!r}")
        out[task] = int(value)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--ratios", nargs="+", type=int, default=[2, 4, 8], help="kept share 1/R for every method")
    parser.add_argument("--presses", nargs="*", default=list(PRESSES), help="kvpress presses (none: skip kvpress)")
    parser.add_argument("--examples", type=int, default=4, help="examples per task (shared-context: see below)")
    parser.add_argument("--shared-contexts", type=int, default=2, help="shared contexts (each asked --shared-docs times)")
    parser.add_argument("--shared-docs", type=int, default=4, help="documents (= requests) per shared context")
    parser.add_argument("--docs", type=int, default=3, help="documents per rag-qa example")
    parser.add_argument("--context-tokens", type=_context_tokens, default=None,
                        help="TASK=TOKENS,... (default " + ",".join(f"{k}={v}" for k, v in
                                                                 DEFAULT_CONTEXT_TOKENS.items()) + ")")
    parser.add_argument("--continuation-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens per answer (greedy)")
    parser.add_argument("--repair-tokens", type=int, default=32, help="independent+repair variant (0: skip)")
    parser.add_argument("--placement-ratio", type=int, default=4, help="beacon ratio placed independently (0: skip)")
    parser.add_argument("--no-peers", action="store_true", help="beacon-rag only (no .venv-peers needed)")
    parser.add_argument("--no-llmlingua", action="store_true")
    parser.add_argument("--peers-python", default=None, help="python of the peers env (default .venv-peers)")
    parser.add_argument("--out", default=None, help="write the JSON here (and a PNG next to it)")
    parser.add_argument("--details", action="store_true", help="keep every answer in the JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", action="store_true")


def main(argv: list[str] | None = None) -> None:
    """``python -m beacon_rag.bench.peers``: the bench without the CLI, writing ``--out`` and its plot."""
    parser = argparse.ArgumentParser(prog="beacon-rag bench peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(render_markdown(run(args)))


if __name__ == "__main__":
    main()
