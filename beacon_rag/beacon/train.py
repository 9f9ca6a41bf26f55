"""The Activation Beacon trainer: compression-based auto-regression with a frozen base model.

One step, as inference will use the plug-in:

1. the example's context runs through the beacon window loop WITH gradients
   (``compress_rows(..., grad=True)``: beacon rows use the plug-in's projections, and every later
   window attends to the earlier windows' beacon K/V, so gradients reach the plug-in through them);
   the compression ratio is drawn per step from ``ratios``;
2. the continuation (question + answer, or the text that follows) runs through the PLAIN model
   attending to the compressed memory placed at positions ``0 .. slots-1``, exactly as
   ``KVContext``/the engine place it; next-token loss on the target tokens;
   optionally (``raw_loss_weight > 0``) also the paper's loss: next-token NLL of every context token
   inside the window loop, where later windows see earlier ones only through beacons;
3. optionally (``distill_weight > 0``) a KL term pulls the compressed model's next-token
   distribution on the target tokens towards the same base model's distribution with the
   UNcompressed context (teacher, no gradient): a denser signal than the one-hot labels;
4. optionally (``anchor_weight > 0``) ``anchor_weight * ||theta - theta_start||^2`` over the
   plug-in's parameters (L2-SP) holds a warm start near the plug-in it started from: on a CPU
   budget each new mixture so far bought one task by losing another (the training README), and
   this term charges for every step away from what the starting plug-in already did well.
   ``anchor_plugin`` names another plug-in to pull towards: a run continued from a committed
   checkpoint of an anchored run (its optimizer state gone) keeps the first run's anchor.

Only plug-in parameters train (base frozen: ``requires_grad_(False)`` and checked at the end of
tests). The run is deterministic in its seed: example ``i`` and the ratio of step ``k`` are pure
functions of (seed, i/k), so resuming from a checkpoint (plug-in, optimizer, scheduler, step, RNG
state) continues exactly as an uninterrupted run would.

Gradient checkpointing (``gradient_checkpointing``) works at window granularity inside
``compress_rows``: each window is a pure function of its embeddings and the memory before it,
so backward can recompute it; the short continuation forward is not checkpointed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from beacon_rag.beacon.compress import KEEP_KINDS, compress_rows, validate, verbatim_mask
from beacon_rag.beacon.data import BENCH_TASKS, TRAIN_TASKS, Example, Mixture, TrainingData, make_task_examples
from beacon_rag.beacon.plugin import BeaconPlugin, BeaconWeightsError
from beacon_rag.kv import cache_from_layers, rotary_tables, rotate
from beacon_rag.models import LoadedModel

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
EVAL_TASKS = ("lm-loss", "passkey", "rag-qa", "codes", "multiturn", "recall")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved next to every checkpoint (``train_config.json``)."""

    output_dir: str = "benchmarks/training/run"
    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    dtype: str = "float32"  # or "bfloat16"
    device: str = "cpu"
    seed: int = 0
    steps: int = 1000
    grad_accum: int = 1
    # Examples per forward: one context length is drawn per batch, so the rows share the window
    # loop. 1 keeps the example stream of runs made before batching existed.
    batch_size: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    window: int = 256
    ratios: tuple[int, ...] = (2, 4, 8)
    sink: int = 0
    low_rank: int | None = 32  # None: full-rank copies of q/k/v
    context_tokens: tuple[int, int] = (512, 1024)
    target_tokens: int = 48
    tasks: dict[str, float] = field(default_factory=lambda: dict(Mixture().weights))
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    raw_loss_weight: float = 0.0  # the paper's next-token loss on the context's raw tokens (0: off)
    answer_weight: float = 0.0  # extra weight on the answer's own tokens in QA targets (0: off)
    # Verbatim tokens kept raw among the beacons (``KEEP_KINDS``; None: beacons only). A plug-in is
    # trained with the memory layout it will be used with, and records it (``keep`` in its config).
    keep: str | None = None
    # Restart the beacon windows at every document and conversation turn (``Example.segment_starts``),
    # as the engine does when it caches each as its own segment. Off keeps earlier runs' layout: one
    # segment per context, windows running across documents.
    segments: bool = False
    init_plugin: str | None = None  # a saved plug-in to start from (warm start of a new run)
    anchor_weight: float = 0.0  # L2 pull towards the starting weights (0: off); see the module docstring
    anchor_plugin: str | None = None  # pull towards this saved plug-in instead of the starting weights
    package_docs: bool = False  # training filler also from installed packages' READMEs (more text for long runs)
    gradient_checkpointing: bool = False
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    eval_every: int = 50
    eval_examples: int = 2  # per eval task
    eval_context_tokens: int = 768
    eval_ratio: int = 4
    # Which held-out tasks the eval scores: a subset compares plug-ins on one task in a fraction
    # of the eval's time (it takes minutes per task on a CPU core at 1,024 tokens).
    eval_tasks: tuple[str, ...] = EVAL_TASKS
    export_dir: str | None = None  # also write the latest plug-in here at every checkpoint
    threads: int | None = None
    resume: bool = True  # continue from the newest checkpoint in output_dir if there is one

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("ratios", "context_tokens", "eval_tasks"):
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def check(self) -> None:
        """Refuse settings the window loop or the schedule cannot use, before any model loads."""
        if not self.ratios:
            raise ValueError("ratios must not be empty")
        for ratio in self.ratios:
            validate(self.window, ratio, self.sink)
        if self.steps < 1 or self.grad_accum < 1 or self.batch_size < 1:
            raise ValueError("steps, grad_accum and batch_size must be >= 1")
        low, high = self.context_tokens
        if not 16 <= low <= high:
            raise ValueError(f"context_tokens must be (low, high) with 16 <= low <= high, got {self.context_tokens}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.anchor_weight < 0:
            raise ValueError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        if self.keep is not None and self.keep not in KEEP_KINDS:
            raise ValueError(f"keep must be one of {', '.join(KEEP_KINDS)} or None, got {self.keep!r}")
        if self.anchor_plugin and not self.anchor_weight:
            raise ValueError("anchor_plugin needs anchor_weight > 0: without a weight nothing pulls towards it")
        unknown = [task for task in self.eval_tasks if task not in BENCH_TASKS]
        if unknown or not self.eval_tasks:
            raise ValueError(f"eval_tasks must name tasks among {', '.join(sorted(BENCH_TASKS))}; "
                             f"got {', '.join(self.eval_tasks) or 'none'}")


# ---------------------------------------------------------------------------- checkpoint state
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


def save_state(folder: Path, optimizer: dict[str, Any], scheduler: dict[str, Any], counters: dict[str, Any]) -> None:
    """Optimizer, scheduler, counters and RNG as safetensors + JSON: nothing is pickled.

    Resuming must not unpickle files (a checkpoint folder is data that may come from anywhere),
    so the optimizer's per-parameter tensors go into safetensors and everything else into JSON.
    """
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    per_param: dict[str, list[str]] = {}
    for index, values in optimizer["state"].items():
        names = []
        for name, value in values.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optimizer.{index}.{name}"] = tensor.detach().cpu().contiguous()
            names.append(name)
        per_param[str(index)] = names
    from safetensors.torch import save_file

    save_file(tensors, str(folder / STATE_TENSORS))
    (folder / STATE_JSON).write_text(json.dumps({
        "counters": counters, "scheduler": scheduler, "param_groups": optimizer["param_groups"],
        "optimizer_state": per_param,
    }, indent=1))


def load_state(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Inverse of ``save_state``; restores the torch RNG as a side effect."""
    from safetensors.torch import load_file

    meta = json.loads((folder / STATE_JSON).read_text())
    tensors = load_file(str(folder / STATE_TENSORS))
    torch.set_rng_state(tensors["rng.torch"])
    state = {int(index): {name: tensors[f"optimizer.{index}.{name}"] for name in names}
             for index, names in meta["optimizer_state"].items()}
    return {"state": state, "param_groups": meta["param_groups"]}, meta["scheduler"], meta["counters"]


# ---------------------------------------------------------------------------- losses
def _memory_cache(lm: LoadedModel, keys: torch.Tensor, values: torch.Tensor) -> Any:
    """A cache of compressed ``[layers, B, heads, slots, dim]`` pre-RoPE K/V at positions ``0..slots-1``.

    The same placement as ``KVContext.append`` + ``to_cache`` (the engine's), for a batch of rows.
    """
    cos, sin = rotary_tables(lm, 0, keys.shape[3])
    return cache_from_layers([rotate(k, cos, sin) for k in keys], list(values))


def _padded(rows: list[list[int]], device: Any) -> torch.Tensor:
    """Right-padded ids. Causal attention never lets a real token see the padding after it, and
    positions count from the left, so no attention mask is needed and real tokens' logits are exact."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def _target_slice(example: Example) -> tuple[slice, torch.Tensor]:
    """Which continuation logits predict the target tokens, and those targets.

    Logit ``t`` predicts continuation token ``t + 1``; the first target token (at ``loss_start``)
    is predicted by logit ``loss_start - 1``, or, when the prompt is empty, by the last context
    position, which the memory does not give us. For ``lm`` examples the first target token is
    therefore not scored (it is fed as input); every other one is.
    """
    start = max(example.loss_start - 1, 0)
    cont = example.continuation_ids
    targets = torch.tensor(cont[start + 1 :], dtype=torch.long)
    return slice(start, len(cont) - 1), targets


def example_losses(lm: LoadedModel, plugin: BeaconPlugin, example: Example, *, window: int, ratio: int,
                   sink: int = 0, distill_weight: float = 0.0, temperature: float = 1.0,
                   raw_weight: float = 0.0, answer_weight: float = 0.0, grad: bool = True,
                   checkpoint: bool = False, keep: str | None = None,
                   segments: bool = False) -> dict[str, torch.Tensor]:
    """Loss terms of one example: ``lm`` (next-token NLL on the target), ``distill`` (KL), ``raw``,
    ``answer`` (NLL on the answer's tokens only, when it has an ``answer_span``), ``loss``."""
    return batch_losses(lm, plugin, [example], window=window, ratio=ratio, sink=sink,
                        distill_weight=distill_weight, temperature=temperature, raw_weight=raw_weight,
                        answer_weight=answer_weight, grad=grad, checkpoint=checkpoint, keep=keep,
                        segments=segments)


def batch_losses(lm: LoadedModel, plugin: BeaconPlugin, examples: list[Example], *, window: int, ratio: int,
                 sink: int = 0, distill_weight: float = 0.0, temperature: float = 1.0,
                 raw_weight: float = 0.0, answer_weight: float = 0.0, grad: bool = True,
                 checkpoint: bool = False, keep: str | None = None,
                 segments: bool = False) -> dict[str, torch.Tensor]:
    """Loss terms averaged over ``examples``, each example's own mean first (as gradient accumulation
    over them one by one would give): ``lm``, ``distill``, ``raw``, ``answer``, ``loss``.

    Examples with contexts of equal length go through the window loop together as one batch
    (``compress_rows``); a GPU step then costs about the kernel launches of one example.

    The memory is built exactly as inference builds it: the beacon window loop, then the kept
    pre-RoPE keys rotated to positions ``0..slots-1``, then a plain cache.

    ``raw`` (with ``raw_weight > 0``) is the paper's objective: next-token NLL of every context token
    inside the window loop, where window ``k``'s tokens see windows ``< k`` only through their
    beacons. It scores the whole context, not only the few target tokens, so each forward teaches
    the beacons from ten to twenty times more predictions: what a CPU budget of a few hundred
    thousand tokens needs.

    ``answer`` is the NLL of the answer's own tokens (``Example.answer_span``: the digits of a pass
    key, not the sentence around them), averaged over the examples that have one; it is present
    only when some do. ``answer_weight > 0`` adds it to ``loss`` once more: the template around an
    answer is learnt within a few steps, after which it still makes up most of the target loss.

    ``keep`` keeps verbatim tokens raw in the memory (``verbatim_mask``). Rows of one forward share
    the kept positions, so examples are grouped by their flags as well as by length.

    ``segments`` restarts the windows at each example's ``segment_starts`` (the engine's layout);
    rows of one forward share them too, so they join the grouping key.
    """
    if not examples:
        raise ValueError("batch_losses needs at least one example")
    groups: dict[tuple[int, tuple[bool, ...], tuple[int, ...]], list[Example]] = {}
    for example in examples:
        flags = tuple(verbatim_mask(lm, example.context_ids, keep)) if keep else ()
        starts = tuple(example.segment_starts) if segments else ()
        groups.setdefault((len(example.context_ids), flags, starts), []).append(example)
    totals: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for (_, flags, starts), group in groups.items():
        part = _group_losses(lm, plugin, group, window=window, ratio=ratio, sink=sink,
                             distill_weight=distill_weight, temperature=temperature, raw_weight=raw_weight,
                             answer_weight=answer_weight, grad=grad, checkpoint=checkpoint,
                             keep_raw=flags if keep else None, segment_starts=starts)
        answered = sum(_answer_rows(e) is not None for e in group)
        for key, value in part.items():
            # The ``answer*`` terms are means over the examples that have one; every other term over all.
            count = answered if key.startswith("answer") else len(group)
            totals[key] = totals[key] + value * count if key in totals else value * count
            counts[key] = counts.get(key, 0) + count
    return {key: value / counts[key] for key, value in totals.items()}


def _group_losses(lm: LoadedModel, plugin: BeaconPlugin, group: list[Example], *, window: int, ratio: int,
                  sink: int, distill_weight: float, temperature: float, raw_weight: float,
                  answer_weight: float, grad: bool, checkpoint: bool,
                  keep_raw: tuple[bool, ...] | None,
                  segment_starts: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """``batch_losses`` for examples whose contexts share length, kept positions and segments (one batch)."""
    n = len(group[0].context_ids)
    ids = torch.tensor([e.context_ids for e in group], dtype=torch.long, device=lm.device)
    labels = torch.tensor([e.context_ids + e.continuation_ids[:1] for e in group], dtype=torch.long,
                          device=lm.device)
    raw_sum: list[torch.Tensor] = []

    def score_window(start: int, end: int, hidden: torch.Tensor) -> None:
        logits = lm.model.lm_head(hidden).float()
        raw_sum.append(F.cross_entropy(logits.flatten(0, 1), labels[:, start + 1 : end + 1].flatten(),
                                       reduction="sum"))

    with torch.set_grad_enabled(grad):
        keys, values, _, _ = compress_rows(lm, plugin, ids, ([], []), 0, window=window, ratio=ratio, sink=sink,
                                           grad=grad, on_window=score_window if raw_weight > 0 else None,
                                           checkpoint=checkpoint, keep_raw=keep_raw,
                                           segment_starts=segment_starts)
        continuations = [e.continuation_ids for e in group]
        out = lm.model(input_ids=_padded(continuations, lm.device), **lm.cache_kwargs(_memory_cache(lm, keys, values)),
                       use_cache=True)
        logits = out.logits.float()
        teacher = full_context_logits(lm, group) if distill_weight > 0 else None
        nll, kl, answer, token_hits, exact = [], [], [], [], []
        for row, example in enumerate(group):
            rows, targets = _target_slice(example)
            student = logits[row, rows]
            targets = targets.to(student.device)
            per_token = F.cross_entropy(student, targets, reduction="none")
            nll.append(per_token.mean())
            span = _answer_rows(example)
            if span is not None:
                answer.append(per_token[span].mean())
                hits = _answer_hits(student, targets, span)
                token_hits.append(hits.mean())
                exact.append(hits.all().float())
            if teacher is not None:
                t = temperature
                kl.append(F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher[row, rows] / t, -1),
                                   log_target=True, reduction="batchmean") * (t * t))
        out_losses = {"lm": torch.stack(nll).mean()}
        out_losses["loss"] = out_losses["lm"]
        if kl:
            out_losses["distill"] = torch.stack(kl).mean()
            out_losses["loss"] = out_losses["loss"] + distill_weight * out_losses["distill"]
        if raw_sum:
            out_losses["raw"] = torch.stack(raw_sum).sum() / (len(group) * n)
            out_losses["loss"] = out_losses["loss"] + raw_weight * out_losses["raw"]
        if answer:
            out_losses["answer"] = torch.stack(answer).mean()
            out_losses["answer_token_accuracy"] = torch.stack(token_hits).mean()
            out_losses["answer_exact"] = torch.stack(exact).mean()
            if answer_weight > 0:
                # Scaled by the share of rows with an answer, so the batch mean of ``loss`` is the
                # mean over examples of each example's own loss (lm examples add nothing).
                share = len(answer) / len(group)
                out_losses["loss"] = out_losses["loss"] + answer_weight * share * out_losses["answer"]
    return out_losses


def _answer_rows(example: Example) -> slice | None:
    """The answer's tokens among the rows ``_target_slice`` scores (target token ``j`` is row ``j``
    whenever the prompt is not empty, which every example with an answer has)."""
    if example.answer_span is None or example.loss_start == 0:
        return None
    start, end = example.answer_span
    return slice(start, end)


def _answer_hits(logits: torch.Tensor, targets: torch.Tensor, span: slice) -> torch.Tensor:
    """1.0 where the greedy (argmax) token is the answer's token, teacher-forced, else 0.0.

    Why: an answer loss of 1.1 nats per digit can mean every digit is the runner-up or half of them
    are right; the share of argmax hits, and whether all of an answer's tokens hit (what greedy
    decoding after the same prompt would print), say which, without a generation loop.
    """
    return (logits[span].detach().argmax(-1) == targets[span]).float()


@torch.no_grad()
def full_context_logits(lm: LoadedModel, examples: list[Example]) -> torch.Tensor:
    """Teacher: the base model's continuation logits with the raw, uncompressed context.

    ``[B, longest continuation, vocab]`` for examples whose contexts have the same length; only
    the continuation's logits are computed (``logits_to_keep``), not the whole context's.
    """
    n = len(examples[0].context_ids)
    if any(len(e.context_ids) != n for e in examples):
        raise ValueError("full_context_logits needs contexts of one length")
    width = max(len(e.continuation_ids) for e in examples)
    ids = _padded([e.context_ids + e.continuation_ids for e in examples], lm.device)
    return lm.model(input_ids=ids, logits_to_keep=width).logits.float()


@torch.no_grad()
def reference_losses(lm: LoadedModel, example: Example) -> dict[str, float]:
    """Target NLL with the full (uncompressed) context and with no context at all: the two bounds
    (and the same two for the answer's tokens alone, ``answer_full`` / ``answer_none``, if any, with
    their teacher-forced ``answer_token_accuracy_*`` and ``answer_exact_*``)."""
    rows, targets = _target_slice(example)
    targets = targets.to(lm.device)
    full_logits = full_context_logits(lm, [example])[0][rows]
    full = F.cross_entropy(full_logits, targets, reduction="none")
    ids = torch.tensor([example.continuation_ids], device=lm.device)
    none_logits = lm.model(input_ids=ids).logits[0].float()[rows]
    none = F.cross_entropy(none_logits, targets, reduction="none")
    out = {"full": full.mean().item(), "none": none.mean().item()}
    span = _answer_rows(example)
    if span is not None:
        out.update(answer_full=full[span].mean().item(), answer_none=none[span].mean().item())
        for name, logits in (("full", full_logits), ("none", none_logits)):
            hits = _answer_hits(logits, targets, span)
            out[f"answer_token_accuracy_{name}"] = hits.mean().item()
            out[f"answer_exact_{name}"] = hits.all().float().item()
    return out


def _by_task(prefix: str, rows: list[tuple[str, float, float, float]]) -> dict[str, dict[str, float | None]]:
    """Per-task means of (compressed, full, none) losses and the share of the none-to-full gap recovered."""
    per_task: dict[str, list[tuple[float, float, float]]] = {}
    for task, compressed, full, none in rows:
        per_task.setdefault(task, []).append((compressed, full, none))
    means = {t: [sum(column) / len(values) for column in zip(*values)] for t, values in per_task.items()}
    return {
        f"{prefix}_by_task": {t: m[0] for t, m in means.items()},
        f"{prefix}_full_by_task": {t: m[1] for t, m in means.items()},
        f"{prefix}_none_by_task": {t: m[2] for t, m in means.items()},
        f"{prefix}_gap_recovered_by_task": {
            # + 0.0: for accuracies (full above none) nothing recovered came out as -0.0 in the JSON.
            t: (m[2] - m[0]) / (m[2] - m[1]) + 0.0 if abs(m[2] - m[1]) > 1e-6 else None for t, m in means.items()
        },
    }


# ---------------------------------------------------------------------------- schedule
def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup to 1, then cosine down to ``min_lr_ratio`` at ``steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def step_ratio(config: TrainConfig, step: int) -> int:
    """The compression ratio of optimizer step ``step``: a pure function of (seed, step)."""
    return random.Random(f"beacon-ratio|{config.seed}|{step}").choice(list(config.ratios))


# ---------------------------------------------------------------------------- the trainer
class Trainer:
    """Holds the model, plug-in, optimizer and data of one run; ``train()`` is the usual entry point.

    ``lm`` may be passed directly (tests pass tiny random models); otherwise it is loaded from
    ``config.model`` in ``config.dtype`` on ``config.device``.
    """

    def __init__(self, config: TrainConfig, lm: LoadedModel | None = None,
                 data: TrainingData | None = None, eval_examples: list[Example] | None = None) -> None:
        config.check()
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        if lm is None:
            from beacon_rag.models import load_model

            lm = load_model(config.model, dtype=getattr(torch, config.dtype), device=config.device)
        self.lm = lm
        lm.model.requires_grad_(False)
        lm.model.eval()
        self.out = Path(config.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = data or TrainingData(
            lm, "train", config.seed,
            Mixture(weights=dict(config.tasks), context_tokens=tuple(config.context_tokens),
                    target_tokens=config.target_tokens, package_docs=config.package_docs),
        )
        self._eval_examples = eval_examples
        self._eval_refs: list[dict[str, float]] | None = None
        self.plugin = BeaconPlugin.from_model(lm, low_rank=config.low_rank, seed=config.seed)
        if config.init_plugin:
            self._load_into(self.plugin, Path(config.init_plugin), "init")
        self.params = [p for p in self.plugin.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        # Taken before any checkpoint loads: a resumed run keeps pulling towards where the run
        # started (or towards anchor_plugin), not towards where it was interrupted.
        self.anchor = self._anchor() if config.anchor_weight > 0 else None
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay,
                                           betas=(0.9, 0.98))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.step = 0
        self.tokens = 0
        self.seconds = 0.0
        self.log_path = self.out / "log.jsonl"

    def _load_into(self, target: BeaconPlugin, folder: Path, role: str) -> None:
        """Put a saved plug-in's weights into ``target``, a plug-in of this run's shape.

        Used for the warm start (a new run with a new objective or schedule continues what an
        earlier run learned instead of starting over) and for ``anchor_plugin``. A smaller rank is
        widened (``widen_from``): a run with a larger rank (or full rank) starts from the same
        function with room to learn more, and its anchor is that same function."""
        loaded = BeaconPlugin.load(folder, self.lm)
        if loaded.low_rank == target.low_rank:
            target.load_state_dict(loaded.state_dict())
        else:
            try:
                target.widen_from(loaded.to(device=self.lm.device, dtype=target.beacon_embed.dtype))
            except BeaconWeightsError as err:
                raise ValueError(
                    f"{role} plug-in {folder} (low rank {loaded.low_rank}) cannot serve this run "
                    f"(low rank {target.low_rank}): {err}"
                ) from None
            logger.info("widened %s from low rank %s to %s", folder, loaded.low_rank, target.low_rank or "full")
        logger.info("%s plug-in %s (its training step %s)", role, folder, loaded.config.get("training_step"))
        if role == "init" and loaded.config.get("keep") != self.config.keep:
            # Not an error (changing the memory layout is a legitimate experiment), but easy to do
            # by forgetting --keep when continuing a plug-in that inference runs with kept tokens.
            logger.warning("%s plug-in %s was trained with keep=%s; this run uses keep=%s", role, folder,
                           loaded.config.get("keep"), self.config.keep)

    def _anchor(self) -> list[torch.Tensor]:
        """The weights the anchor term pulls towards, one detached tensor per trained parameter."""
        if not self.config.anchor_plugin:
            return [p.detach().clone() for p in self.params]
        # Start from this run's starting weights: an anchor of a smaller rank fills its own
        # directions, and the ones it lacks keep the start's A rows with zero B columns (they pull
        # towards adding nothing). A fresh from_model() here would do the same only when the start
        # was widened from this run's seed; a start already at this rank (a widened run continued
        # under another seed) has other A rows, and the pull would drag them towards random ones.
        target = BeaconPlugin.from_model(self.lm, low_rank=self.config.low_rank, seed=self.config.seed)
        target.load_state_dict(self.plugin.state_dict())
        self._load_into(target, Path(self.config.anchor_plugin), "anchor")
        return [p.detach().clone() for p in target.parameters()]

    # -------------------------------------------------------------- checkpoints
    def checkpoints(self) -> list[Path]:
        found = [p for p in self.out.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_JSON).is_file()]
        return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))

    def save_checkpoint(self) -> Path:
        """Plug-in (its own format), optimizer, scheduler, step, counters and RNG state; atomic by rename."""
        final = self.out / f"{CHECKPOINT_PREFIX}{self.step}"
        tmp = self.out / f".tmp-{CHECKPOINT_PREFIX}{self.step}"
        shutil.rmtree(tmp, ignore_errors=True)
        self._export(tmp / "plugin")
        save_state(tmp, self.optimizer.state_dict(), self.scheduler.state_dict(),
                   {"step": self.step, "tokens": self.tokens, "seconds": self.seconds})
        (tmp / "train_config.json").write_text(json.dumps(self.config.to_json(), indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.checkpoints()[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        if self.config.export_dir:
            self.export(self.config.export_dir)
        logger.info("checkpoint %s", final)
        return final

    def load_checkpoint(self, folder: Path) -> None:
        loaded = BeaconPlugin.load(folder / "plugin", self.lm)
        self.plugin.load_state_dict(loaded.state_dict())
        optimizer, scheduler, counters = load_state(folder)
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(scheduler)
        self.step, self.tokens, self.seconds = int(counters["step"]), int(counters["tokens"]), float(counters["seconds"])
        logger.info("resumed from %s at step %d", folder, self.step)

    def _export(self, folder: Path) -> Path:
        self.plugin.config.update({
            "trained": self.step > 0, "window": self.config.window, "ratios": list(self.config.ratios),
            "sink": self.config.sink, "training_step": self.step,
        })
        # Inference keeps the verbatim tokens the plug-in was trained to sit beside; a warm start
        # from such a plug-in, trained without them, must not pass the setting on.
        if self.config.keep:
            self.plugin.config["keep"] = self.config.keep
        else:
            self.plugin.config.pop("keep", None)
        return self.plugin.save(folder)

    def export(self, folder: str | os.PathLike[str]) -> Path:
        """The plug-in for shipping: ``beacon.safetensors`` + ``beacon_config.json`` + ``TRAINING.md``."""
        target = Path(folder)
        tmp = target.parent / f".{target.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self._export(tmp)
        (tmp / "TRAINING.md").write_text(self.training_note())
        target.mkdir(parents=True, exist_ok=True)
        for item in tmp.iterdir():  # file by file: the folder may hold other files of the package
            item.replace(target / item.name)
        tmp.rmdir()
        return target

    def training_note(self) -> str:
        c = self.config
        last = self._last_eval or {}
        packages = " and the installed packages' READMEs (`package_sources()`)" if c.package_docs else ""
        return (
            "# How this beacon plug-in was trained\n\n"
            f"Written automatically by `beacon_rag.beacon.train` at step {self.step} of {c.steps} "
            f"({self.tokens} tokens, {self.seconds / 3600:.2f} h of training time).\n\n"
            f"- model: {self.lm.name} (fingerprint {self.lm.fingerprint[:16]}…), {c.dtype} on {c.device}\n"
            f"- plug-in: low-rank {c.low_rank} deltas over the base q/k/v + beacon embedding\n"
            f"- objective: compression-based auto-regression (context through the beacon window loop with "
            f"gradients, next-token loss on the continuation), distillation weight {c.distill_weight}, raw-token "
            f"loss weight {c.raw_loss_weight}, answer-token weight {c.answer_weight}, anchor weight {c.anchor_weight}"
            f"{f' towards {c.anchor_plugin}' if c.anchor_plugin else ''}; "
            f"warm start: {c.init_plugin or 'none (untrained copy)'}\n"
            f"- window {c.window}, ratios {list(c.ratios)} (one per step), sink {c.sink}, "
            f"verbatim tokens kept raw: {c.keep or 'none'}; windows restart at each document and turn: "
            f"{'yes' if c.segments else 'no'}\n"
            f"- data: offline mixture {c.tasks} from `split_sources('train')` (Python stdlib docs)"
            f"{packages}, contexts "
            f"{list(c.context_tokens)} tokens, targets up to {c.target_tokens} tokens; seed {c.seed}\n"
            f"- optimizer: AdamW lr {c.lr}, warmup {c.warmup_steps}, cosine to {c.min_lr_ratio}x, grad clip "
            f"{c.max_grad_norm}, accumulation {c.grad_accum}, batch {c.batch_size}\n"
            f"- latest held-out eval: {json.dumps(last)}\n\n"
            "Full configuration: `train_config` below; the exact command and hardware are in "
            "`benchmarks/training/README.md`.\n\n```json\n" + json.dumps(c.to_json(), indent=1) + "\n```\n"
        )

    # -------------------------------------------------------------- evaluation
    _last_eval: dict[str, Any] | None = None

    def eval_examples(self) -> list[Example]:
        if self._eval_examples is None:
            c = self.config
            self._eval_examples = [
                e for task in c.eval_tasks
                for e in make_task_examples(self.lm, task, "heldout", c.eval_examples, c.eval_context_tokens,
                                            seed=c.seed, target_tokens=c.target_tokens)
            ]
        return self._eval_examples

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Held-out target loss with the compressed context vs the full context vs no context."""
        examples = self.eval_examples()
        if self._eval_refs is None:
            self._eval_refs = [reference_losses(self.lm, e) for e in examples]
        losses = [
            example_losses(self.lm, self.plugin, e, window=self.config.window, ratio=self.config.eval_ratio,
                           sink=self.config.sink, grad=False, keep=self.config.keep,
                           segments=self.config.segments)
            for e in examples
        ]
        compressed = [loss["lm"].item() for loss in losses]
        result: dict[str, Any] = {
            "eval_compressed": sum(compressed) / len(compressed),
            "eval_full": sum(r["full"] for r in self._eval_refs) / len(examples),
            "eval_none": sum(r["none"] for r in self._eval_refs) / len(examples),
            "eval_ratio": self.config.eval_ratio,
            # The per-task means below are shares of these counts; a table of exact answers reads
            # "2 of 8" from them, which a share alone cannot say.
            "eval_examples_by_task": dict(Counter(e.task for e in examples)),
        }
        # Per task too: the mean hides a plug-in that learns the QA answer template (a large loss drop)
        # while LM continuation stays at the no-context level; the share of the none-to-full gap
        # recovered per task is the figure the quality bench reports.
        result.update(_by_task("eval", [(e.task, loss["lm"].item(), ref["full"], ref["none"])
                                        for e, loss, ref in zip(examples, losses, self._eval_refs)]))
        # The answer's tokens alone: the template around them is learnt early and then dominates
        # the QA target loss, so its gap overstates what the memory carries (digits, names).
        result.update(_by_task("eval_answer", [
            (e.task, loss["answer"].item(), ref["answer_full"], ref["answer_none"])
            for e, loss, ref in zip(examples, losses, self._eval_refs) if "answer" in loss and "answer_full" in ref
        ]))
        # Loss is not accuracy: how often the greedy token is the answer's, and how often all of an
        # answer's tokens are (teacher-forced exact match), for the same three conditions.
        for metric in ("answer_token_accuracy", "answer_exact"):
            result.update(_by_task(f"eval_{metric}", [
                (e.task, loss[metric].item(), ref[f"{metric}_full"], ref[f"{metric}_none"])
                for e, loss, ref in zip(examples, losses, self._eval_refs) if metric in loss and "answer_full" in ref
            ]))
        self._last_eval = result
        return result

    # -------------------------------------------------------------- loop
    def _log(self, record: dict[str, Any]) -> None:
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` batches of ``batch_size`` examples at this step's ratio."""
        c = self.config
        ratio = step_ratio(c, self.step)
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "lm": 0.0, "distill": 0.0, "raw": 0.0}
        # The answer loss exists only for batches with a QA example: a step without one logs None
        # rather than a 0.0 that a plot would draw as a perfect answer.
        answers: list[float] = []
        tokens = 0
        for micro in range(c.grad_accum):
            index = self.step * c.grad_accum + micro
            batch = self.data.batch(index, c.batch_size)
            losses = batch_losses(self.lm, self.plugin, batch, window=c.window, ratio=ratio, sink=c.sink,
                                  distill_weight=c.distill_weight, temperature=c.distill_temperature,
                                  raw_weight=c.raw_loss_weight, answer_weight=c.answer_weight,
                                  checkpoint=c.gradient_checkpointing, keep=c.keep, segments=c.segments)
            (losses["loss"] / c.grad_accum).backward()
            for key in totals:
                if key in losses:
                    totals[key] += losses[key].item() / c.grad_accum
            if "answer" in losses:
                answers.append(losses["answer"].item())
            tokens += sum(example.tokens for example in batch)
        anchor_loss = None
        if self.anchor is not None:
            drift = sum(((p - start) ** 2).sum() for p, start in zip(self.params, self.anchor))
            (c.anchor_weight * drift).backward()
            anchor_loss = c.anchor_weight * drift.item()
            totals["loss"] += anchor_loss
        norm = torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        seconds = time.perf_counter() - started
        self.tokens += tokens
        self.seconds += seconds
        return {"step": self.step, "loss": totals["loss"], "lm_loss": totals["lm"],
                "distill_loss": totals["distill"], "raw_loss": totals["raw"],
                "answer_loss": sum(answers) / len(answers) if answers else None,
                **({} if anchor_loss is None else {"anchor_loss": anchor_loss}),
                "ratio": ratio,
                "tokens": self.tokens, "step_tokens": tokens,
                "seconds": round(self.seconds, 3), "step_seconds": round(seconds, 3), "lr": lr,
                "grad_norm": float(norm)}

    def run(self, progress: bool = True, until: int | None = None, time_limit: float | None = None) -> Path:
        """Train until ``config.steps`` (resuming if a checkpoint exists); return the last checkpoint.

        ``until`` stops earlier, after that step (checkpointing there), without changing the
        schedule: how a run is cut into pieces (and how tests simulate an interruption).
        ``time_limit`` (seconds of wall time in this call) does the same when a lease ends at a
        clock time rather than a step: a rented GPU, a CI slot. The step in flight finishes first.
        """
        from tqdm import tqdm

        c = self.config
        if c.resume and self.checkpoints():
            self.load_checkpoint(self.checkpoints()[-1])
        else:
            (self.out / "train_config.json").write_text(json.dumps(c.to_json(), indent=1))
        if self.step == 0 and c.eval_every:
            self._log({"step": 0, **self.evaluate(), "seconds": 0.0, "tokens": 0})
        bar = tqdm(total=c.steps, initial=self.step, desc="beacon train", disable=not progress, unit="step")
        last = None
        stop = c.steps if until is None else min(until, c.steps)
        deadline = None if time_limit is None else time.monotonic() + time_limit
        while self.step < stop:
            record = self.train_step()
            if c.eval_every and self.step % c.eval_every == 0:
                record.update(self.evaluate())
            self._log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", r=record["ratio"])
            out_of_time = deadline is not None and time.monotonic() >= deadline
            if self.step % c.checkpoint_every == 0 or self.step == stop or out_of_time:
                last = self.save_checkpoint()
            if out_of_time:
                logger.info("time limit of %.0f s reached after step %d", time_limit, self.step)
                break
        bar.close()
        return last or self.checkpoints()[-1]


def train(config: TrainConfig, lm: LoadedModel | None = None, progress: bool = True,
          time_limit: float | None = None) -> Path:
    """Train a beacon plug-in as ``config`` says; returns the final checkpoint folder.

    The trained plug-in is in ``<checkpoint>/plugin`` (and in ``config.export_dir`` when set), loadable
    with ``BeaconPlugin.load(folder, lm)``. ``time_limit`` stops (with a checkpoint) after that many
    seconds; calling again with the same config resumes.
    """
    return Trainer(config, lm=lm).run(progress=progress, time_limit=time_limit)


# ---------------------------------------------------------------------------- CLI
def _names(text: str) -> tuple[str, ...]:
    """A list option as given on the command line: items separated by commas and/or spaces."""
    return tuple(text.replace(",", " ").split())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in _names(text))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``beacon-rag train``.

    The defaults are ``TrainConfig``'s: a plain run on the target loss alone. They are not the
    shipped plug-in's recipe (distillation, raw-token loss, a warm start): the exact command of
    every run that led to it is in its ``TRAINING.md``.
    """
    d = TrainConfig()
    parser.add_argument("--output-dir", default=d.output_dir, help="checkpoints and log.jsonl go here")
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: embedded SmolLM2)")
    parser.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=d.device, help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--grad-accum", type=int, default=d.grad_accum)
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="examples per forward (one context length per batch); >1 is how a GPU gets used")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    parser.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    parser.add_argument("--window", type=int, default=d.window)
    parser.add_argument("--ratios", type=_ints, default=d.ratios, help="e.g. '2,4,8' (one drawn per step)")
    parser.add_argument("--sink", type=int, default=d.sink)
    parser.add_argument("--low-rank", type=int, default=d.low_rank, help="delta rank; 0 = full-rank copies")
    parser.add_argument("--context-tokens", type=_ints, default=d.context_tokens, help="'min,max'")
    parser.add_argument("--target-tokens", type=int, default=d.target_tokens)
    parser.add_argument("--tasks", default=None,
                        help="task weights as JSON, e.g. '{\"lm\": 0.5, \"passkey\": 0.5}'; tasks: "
                             + ", ".join(TRAIN_TASKS))
    parser.add_argument("--distill-weight", type=float, default=d.distill_weight)
    parser.add_argument("--distill-temperature", type=float, default=d.distill_temperature)
    parser.add_argument("--raw-loss-weight", type=float, default=d.raw_loss_weight,
                        help="weight of the paper's next-token loss on the context's raw tokens (0: off)")
    parser.add_argument("--answer-weight", type=float, default=d.answer_weight,
                        help="extra weight on the answer's own tokens (a pass key's digits) in QA targets (0: off)")
    parser.add_argument("--keep", choices=KEEP_KINDS, default=d.keep,
                        help="also keep these tokens raw among the beacons, in training and eval, and record "
                        "it in the plug-in so inference does the same (digits: tokens holding a digit; "
                        "numbers: those and the token that ends each number)")
    parser.add_argument("--segments", action="store_true", default=d.segments,
                        help="restart the beacon windows at every document and conversation turn, as the "
                        "engine does when it caches each as its own segment (default: one segment per context)")
    parser.add_argument("--init-plugin", default=None, help="start a new run from this saved plug-in folder")
    parser.add_argument("--anchor-plugin", default=d.anchor_plugin,
                        help="with --anchor-weight: pull towards this saved plug-in instead of the starting weights "
                             "(a run continued from an anchored run's committed plug-in keeps that run's anchor)")
    parser.add_argument("--package-docs", action="store_true",
                        help="training filler also from the installed packages' READMEs, not only the standard "
                             "library's docs (more text for long GPU runs; the held-out text is unchanged)")
    parser.add_argument("--anchor-weight", type=float, default=d.anchor_weight,
                        help="L2 pull of the weights towards the starting plug-in's, so that a warm start keeps "
                             "what it did well (0: off)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute each window's activations in backward (less memory, ~1/3 more compute)")
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    parser.add_argument("--eval-every", type=int, default=d.eval_every)
    parser.add_argument("--eval-examples", type=int, default=d.eval_examples)
    parser.add_argument("--eval-context-tokens", type=int, default=d.eval_context_tokens)
    parser.add_argument("--eval-ratio", type=int, default=d.eval_ratio)
    parser.add_argument("--eval-tasks", type=_names, default=d.eval_tasks, help="comma-separated held-out tasks the eval scores "
                        f"(default {','.join(EVAL_TASKS)})")
    parser.add_argument("--export-dir", default=None, help="also write the latest plug-in here at each checkpoint")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--eval-only", action="store_true",
                        help="print the held-out eval of the starting plug-in (--init-plugin, else the untrained "
                             "copy) at --eval-ratio as JSON, and train nothing")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="stop after this many seconds of wall time, with a checkpoint (run again to resume)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    tasks = json.loads(args.tasks) if args.tasks else dict(Mixture().weights)
    return TrainConfig(
        output_dir=args.output_dir, model=args.model, dtype=args.dtype, device=args.device, seed=args.seed,
        steps=args.steps, grad_accum=args.grad_accum, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm, window=args.window,
        ratios=tuple(args.ratios), sink=args.sink, low_rank=args.low_rank or None,
        context_tokens=tuple(args.context_tokens), target_tokens=args.target_tokens, tasks=tasks,
        distill_weight=args.distill_weight, distill_temperature=args.distill_temperature,
        raw_loss_weight=args.raw_loss_weight, answer_weight=args.answer_weight, keep=args.keep,
        segments=args.segments,
        init_plugin=args.init_plugin,
        anchor_weight=args.anchor_weight, anchor_plugin=args.anchor_plugin, package_docs=args.package_docs,
        gradient_checkpointing=args.gradient_checkpointing, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, eval_every=args.eval_every, eval_examples=args.eval_examples,
        eval_context_tokens=args.eval_context_tokens, eval_ratio=args.eval_ratio, eval_tasks=args.eval_tasks,
        export_dir=args.export_dir, threads=args.threads, resume=not args.no_resume,
    )


def run(args: argparse.Namespace) -> int:
    """``beacon-rag train``: train, print the final checkpoint folder, exit 0 (or, with
    ``--eval-only``, print the starting plug-in's held-out eval: how saved plug-ins are compared
    on the trainer's own figures, answer-token gaps included, without a training run)."""
    if args.eval_only:
        print(json.dumps(Trainer(config_from_args(args)).evaluate(), indent=1))
        return 0
    path = train(config_from_args(args), progress=not args.no_progress, time_limit=args.time_limit)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m beacon_rag.beacon.train ...`` until the CLI wires ``beacon-rag train``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="beacon-rag train", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
