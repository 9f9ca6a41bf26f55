#!/usr/bin/env python
# Usage: .venv/bin/python benchmarks/training/checkpoint_memory.py plain|checkpoint
"""Extra memory of one beacon training step (2K-token context, window 256, ratio 4, raw-token loss)
with and without window-level gradient checkpointing; one fresh process per mode. The peak is
sampled from /proc/self/statm every 5 ms during the step, minus the resident size just before."""
import json, os, sys, threading, time
import torch
from beacon_rag.models import load_model
from beacon_rag.beacon import BeaconPlugin
from beacon_rag.beacon.data import make_task_examples
from beacon_rag.beacon.train import example_losses

PAGE = os.sysconf("SC_PAGE_SIZE")
def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE

mode = sys.argv[1] == "checkpoint"
torch.set_num_threads(1)
lm = load_model(None)
lm.model.requires_grad_(False)
example = make_task_examples(lm, "lm-loss", "train", 1, 2048, seed=0)[0]
plugin = BeaconPlugin.from_model(lm, low_rank=32, seed=0)
plugin.requires_grad_(True)
base = rss(); peak = [base]; done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.005)
t = threading.Thread(target=sample, daemon=True); t.start()
started = time.perf_counter()
loss = example_losses(lm, plugin, example, window=256, ratio=4, raw_weight=1.0, checkpoint=mode)["loss"]
loss.backward()
seconds = time.perf_counter() - started
done.set(); t.join()
grad_norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in plugin.parameters() if p.grad is not None)).item()
print(json.dumps({"checkpoint": mode, "context_tokens": len(example.context_ids), "loss": loss.item(),
                  "grad_norm": grad_norm, "step_extra_mb": (peak[0] - base) / 2**20, "seconds": seconds}))
