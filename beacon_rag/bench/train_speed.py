"""``beacon-rag bench train-speed``: beacon training tokens per second by batch size, side by side.

Why: on a lent H100 the trainer with one example per step ran at about 1,000 tokens/s with the GPU
20% busy (``benchmarks/training/gpu-h100``): SmolLM2-135M's window loop is bound by kernel launches
and Python, not arithmetic, so a step's time barely depends on how many rows it carries. Batching
rows of one context length through the window loop (``TrainConfig.batch_size``) is the fix; this
bench measures what it buys on the machine at hand, every batch size in one run, as ratios to the
smallest.

``--narrow`` swaps the model for a randomly initialised copy of its architecture with the same
depth, vocabulary and window loop but 64-wide layers: its arithmetic is negligible, so what is
left is the per-launch overhead, the regime of a small model on a large GPU, measurable on a CPU.
A step is the trainer's: ``batch_losses`` (window loop with gradients, raw-token loss,
continuation, distillation teacher) + backward + an AdamW step on the plug-in.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from beacon_rag.beacon.data import Mixture, TrainingData
from beacon_rag.beacon.plugin import BeaconPlugin
from beacon_rag.beacon.train import batch_losses
from beacon_rag.bench.report import machine_info, results_dir, save_result, timed_section
from beacon_rag.models import LoadedModel, load_model, model_from_objects

logger = logging.getLogger(__name__)


def narrow_model(source: str | None, *, dtype: torch.dtype, device: str) -> LoadedModel:
    """Same depth, vocabulary, positions and family as the model at ``source``, 64-wide layers, random
    weights. A folder with ``config.json`` and a tokenizer is enough (no weights are read), which
    lets a lent GPU that cannot hold the weights' transfer measure the overhead regime."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(source) if source is not None else None
    if folder is not None and (folder / "config.json").is_file():
        config, tokenizer = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    else:
        full = load_model(source, dtype=dtype)
        config, tokenizer = full.model.config, full.tokenizer
    config = config.__class__.from_dict(config.to_dict())
    config.hidden_size, config.intermediate_size = 64, 128
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 2, 16
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    return model_from_objects(model, tokenizer, name=f"{config.model_type}-{config.num_hidden_layers}-layers-narrow")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.narrow:
        lm = narrow_model(args.model, dtype=dtype, device=args.device)
    else:
        lm = load_model(args.model, dtype=dtype, device=args.device)
    plugin = BeaconPlugin.from_model(lm, low_rank=args.low_rank, seed=0).requires_grad_(True)
    optimizer = torch.optim.AdamW(plugin.parameters(), lr=1e-4)
    data = TrainingData(lm, "train", 0, Mixture(context_tokens=(args.context_tokens, args.context_tokens),
                                                target_tokens=48))
    rows = []
    with timed_section() as clock:
        for size in args.batch_sizes:
            seconds, tokens = 0.0, 0
            for step in range(args.warmup + args.steps):
                batch = data.batch(step, size)
                _sync(args.device)
                started = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                losses = batch_losses(lm, plugin, batch, window=args.window, ratio=args.ratio,
                                      distill_weight=args.distill_weight, raw_weight=args.raw_loss_weight)
                losses["loss"].backward()
                optimizer.step()
                _sync(args.device)
                if step >= args.warmup:  # the first steps pay for allocation and kernel selection
                    seconds += time.perf_counter() - started
                    tokens += sum(e.tokens for e in batch)
            row = {"batch_size": size, "steps": args.steps, "seconds_per_step": seconds / args.steps,
                   "tokens_per_s": tokens / seconds}
            if args.device.startswith("cuda"):
                row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            rows.append(row)
            logger.info("batch %d: %.0f tokens/s", size, row["tokens_per_s"])
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup_vs_first"] = row["tokens_per_s"] / base
    return {
        "bench": "train-speed",
        "model": lm.name,
        "narrow": args.narrow,
        "device": args.device,
        "dtype": args.dtype,
        "setting": {"context_tokens": args.context_tokens, "window": args.window, "ratio": args.ratio,
                    "low_rank": args.low_rank, "raw_loss_weight": args.raw_loss_weight,
                    "distill_weight": args.distill_weight, "threads": args.threads},
        "rows": rows,
        "duration_s": clock.seconds,
        "machine": machine_info(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure and write the JSON (what ``beacon-rag bench train-speed`` calls)."""
    result = measure(args)
    if not args.no_save:
        save_result(result, Path(args.output) if args.output else results_dir() / "train_speed.json")
    return result


def _sizes(text: str) -> list[int]:
    sizes = [int(x) for x in text.replace(",", " ").split()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: embedded SmolLM2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--narrow", action="store_true",
                        help="random 64-wide copy of the model: measures per-launch overhead, not arithmetic")
    parser.add_argument("--batch-sizes", type=_sizes, default=[1, 4, 16], help="e.g. '1,4,16'")
    parser.add_argument("--context-tokens", type=int, default=1024)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--low-rank", type=int, default=32)
    parser.add_argument("--raw-loss-weight", type=float, default=1.0)
    parser.add_argument("--distill-weight", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=None, help="JSON file (default: benchmarks/results/train_speed.json)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--json", action="store_true", help="print one JSON line")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m beacon_rag.bench.train_speed", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    print(json.dumps(run(args), indent=None if args.json else 2))


if __name__ == "__main__":
    main()
