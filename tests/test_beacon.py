"""Activation Beacon: fast compression against the slow reference, chaining, weights I/O, validation.

Plug-ins in these tests are the untrained copies perturbed with small noise: with exact copies, a
fast path that used the base projection (or embedding) at beacon positions would still agree with
the reference, and such a bug would go unseen.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from conftest import FAMILIES, tiny_model

from beacon_rag.beacon import (
    BeaconPlugin,
    BeaconWeightsError,
    beacon_layout,
    choose_ratio,
    compress_segment,
    slot_count,
)
from beacon_rag.beacon.compress import compress_rows, peak_positions, verbatim_mask
from beacon_rag.beacon.reference import reference_compress
from beacon_rag.compressors import Compressor, prefill_pre_rope
from beacon_rag.compressors.beacon import UNTRAINED_ID, BeaconCompressor, untrained_plugin
from beacon_rag.engine import Engine
from beacon_rag.kv import CompressedKV, KVContext
from beacon_rag.models import LoadedModel

ATOL = 2e-4

pytestmark = pytest.mark.usefixtures("single_thread")


def perturbed_plugin(lm: LoadedModel, seed: int = 1, with_o: bool = False, scale: float = 0.05) -> BeaconPlugin:
    plugin = BeaconPlugin.from_model(lm, with_o=with_o)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in plugin.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale * param.abs().mean())
    return plugin


def random_ids(n: int, seed: int = 0) -> list[int]:
    return torch.randint(10, 5000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def exact_context(lm: LoadedModel, ids: list[int]) -> KVContext:
    context = KVContext(lm)
    if ids:
        keys, values = prefill_pre_rope(lm, ids, context)
        context.append(CompressedKV(keys, values, raw_tokens=len(ids)))
    return context


def next_logits(lm: LoadedModel, context: KVContext, kv: CompressedKV, next_ids: list[int]) -> torch.Tensor:
    """Logits of ``next_ids`` run through the PLAIN model after ``context`` + ``kv`` (placed by KVContext)."""
    placed = context.copy()
    placed.append(kv)
    cache = placed.to_cache()
    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([next_ids]), **lm.cache_kwargs(cache), use_cache=True)
    return out.logits[0]


# (window, ratio, sink, segment length, context length): lengths are not multiples of the window.
CASES = [
    (8, 2, 0, 21, 0),
    (8, 4, 1, 19, 0),
    (16, 8, 1, 37, 0),
    (16, 4, 0, 30, 6),
    (8, 8, 0, 13, 3),
    (16, 2, 1, 20, 5),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("window,ratio,sink,n,context_len", CASES)
def test_fast_matches_reference(tiny_models, family, window, ratio, sink, n, context_len):
    lm = tiny_models[family]
    plugin = perturbed_plugin(lm)
    ids = random_ids(context_len + n + 3, seed=n)
    context = exact_context(lm, ids[:context_len])
    segment, following = ids[context_len : context_len + n], ids[context_len + n :]

    fast = compress_segment(lm, plugin, segment, context, window=window, ratio=ratio, sink=sink)
    slow = reference_compress(lm, plugin, segment, context, window=window, ratio=ratio, sink=sink)

    expected_slots = slot_count(n, window, ratio, sink, context_len)
    assert fast.slots == slow.slots == expected_slots
    assert fast.raw_tokens == n and fast.info == slow.info
    assert fast.info["sink"] == (min(sink, n) if context_len == 0 else 0)
    torch.testing.assert_close(fast.keys, slow.keys, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(fast.values, slow.values, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(
        next_logits(lm, context, fast, following), next_logits(lm, context, slow, following), atol=ATOL, rtol=1e-4
    )


def test_fast_matches_reference_with_o(tiny_models):
    """The older Llama-2 release also has ``beacon_o_proj``."""
    lm = tiny_models["llama"]
    plugin = perturbed_plugin(lm, with_o=True)
    ids = random_ids(27, seed=5)
    context = KVContext(lm)
    fast = compress_segment(lm, plugin, ids, context, window=8, ratio=4, sink=1)
    slow = reference_compress(lm, plugin, ids, context, window=8, ratio=4, sink=1)
    torch.testing.assert_close(fast.keys, slow.keys, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(fast.values, slow.values, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("which", ["beacon_embed", "k", "q", "v"])
def test_beacon_parameters_are_used(tiny_models, which):
    """Changing any beacon parameter changes the output (layer 1's keys depend on layer 0's q/v)."""
    lm = tiny_models["qwen2"]
    plugin = perturbed_plugin(lm)
    other = perturbed_plugin(lm)
    with torch.no_grad():
        target = other.beacon_embed if which == "beacon_embed" else other.layers[0].projection(which).weight
        target.add_(0.5)
    ids = random_ids(20, seed=2)
    a = compress_segment(lm, plugin, ids, KVContext(lm), window=8, ratio=4)
    b = compress_segment(lm, other, ids, KVContext(lm), window=8, ratio=4)
    assert (a.keys - b.keys).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sink", [0, 1])
def test_chained_turns_equal_one_pass(tiny_models, family, sink):
    """Turn A then turn B (after A's placed beacons) == A+B at once, when len(A) is a multiple of W."""
    lm = tiny_models[family]
    plugin = perturbed_plugin(lm)
    ids = random_ids(16 + 11, seed=7)
    a_ids, b_ids = ids[:16], ids[16:]
    base = KVContext(lm)
    kv_a = compress_segment(lm, plugin, a_ids, base, window=8, ratio=4, sink=sink)
    after_a = base.copy()
    after_a.append(kv_a)
    kv_b = compress_segment(lm, plugin, b_ids, after_a, window=8, ratio=4, sink=sink)
    kv_ab = compress_segment(lm, plugin, ids, base, window=8, ratio=4, sink=sink)
    assert kv_ab.slots == kv_a.slots + kv_b.slots
    assert kv_b.info["sink"] == 0
    torch.testing.assert_close(torch.cat([kv_a.keys, kv_b.keys], dim=2), kv_ab.keys, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(torch.cat([kv_a.values, kv_b.values], dim=2), kv_ab.values, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("keep", [False, True])
def test_segment_starts_equal_compressing_each_segment_after_the_others(tiny_models, family, keep):
    """One pass with ``segment_starts`` == the engine's chain of segments, where A's length is NOT a
    multiple of the window: without the restart, B's first window would begin inside A's."""
    lm = tiny_models[family]
    plugin = perturbed_plugin(lm)
    ids = random_ids(13 + 11 + 6, seed=8)
    flags = [i % 5 == 0 for i in range(len(ids))] if keep else None
    starts = (13, 24)
    segments = list(itertools.pairwise((0, *starts, len(ids))))
    chained, context = [], KVContext(lm)
    for begin, stop in segments:
        kv = compress_segment(lm, plugin, ids[begin:stop], context, window=8, ratio=4, sink=1,
                              keep_raw=flags[begin:stop] if flags else None)
        context.append(kv)
        chained.append(kv)
    tensor = torch.tensor([ids])
    keys, values, sink_kept, beacons = compress_rows(lm, plugin, tensor, ([], []), 0, window=8, ratio=4, sink=1,
                                                     keep_raw=flags, segment_starts=starts)
    assert sink_kept == 1 and beacons == sum(kv.info["beacons"] for kv in chained)
    torch.testing.assert_close(keys[:, 0], torch.cat([kv.keys for kv in chained], dim=2), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(values[:, 0], torch.cat([kv.values for kv in chained], dim=2), atol=ATOL, rtol=1e-4)
    memory, peaks = 0, []
    for (begin, stop), kv in zip(segments, chained):
        peaks.append(peak_positions(stop - begin, 8, 4, 1, memory, flags[begin:stop] if flags else None))
        memory += kv.slots
    assert peak_positions(len(ids), 8, 4, 1, 0, flags, starts) == max(peaks)
    plain, _, _, _ = compress_rows(lm, plugin, tensor, ([], []), 0, window=8, ratio=4, sink=1, keep_raw=flags)
    assert plain.shape != keys.shape or not torch.allclose(plain, keys, atol=ATOL)


@pytest.mark.parametrize("starts", [(0,), (5, 5), (9, 4), (30,)])
def test_segment_starts_are_checked(tiny_models, starts):
    lm = tiny_models["llama"]
    with pytest.raises(ValueError, match="segment starts"):
        compress_rows(lm, perturbed_plugin(lm), torch.tensor([random_ids(20)]), ([], []), 0, window=8, ratio=4,
                      segment_starts=starts)


@pytest.mark.parametrize("family", FAMILIES)
def test_ratio_zero_equals_exact(tiny_models, family):
    lm = tiny_models[family]
    plugin = perturbed_plugin(lm)  # never used at ratio 0: there are no beacons
    ids = random_ids(30, seed=3)
    context = exact_context(lm, ids[:4])
    kv = compress_segment(lm, plugin, ids[4:], context, window=8, ratio=0, sink=1)
    keys, values = prefill_pre_rope(lm, ids[4:], context)
    assert kv.slots == 26 == slot_count(26, 8, 0, 1, 4)
    torch.testing.assert_close(kv.keys, keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kv.values, values, atol=1e-5, rtol=1e-5)


def test_layout_and_slot_formula():
    assert beacon_layout(8, 4) == [False] * 4 + [True] + [False] * 4 + [True]
    assert beacon_layout(5, 4) == [False] * 4 + [True, False, True]  # partial window: ceil(5/4) beacons
    assert beacon_layout(3, 0) == [False] * 3
    assert slot_count(45, 8, 2) == 5 * 4 + 3
    assert slot_count(45, 8, 2, sink=1) == 24
    assert slot_count(45, 8, 2, sink=1, context_length=7) == 23
    assert slot_count(3, 16, 8, sink=4) == 3 + 1  # sink never exceeds the segment
    assert slot_count(32, 16, 8) == 4
    assert slot_count(0, 16, 8, sink=1) == 0
    assert slot_count(45, 8, 0) == 45
    for n in (1, 7, 8, 9, 33):
        kv_layouts = [beacon_layout(min(8, n - s), 4) for s in range(0, n, 8)]
        assert sum(sum(layout) for layout in kv_layouts) == slot_count(n, 8, 4)


def test_empty_segment(tiny_models):
    lm = tiny_models["llama"]
    kv = compress_segment(lm, perturbed_plugin(lm), [], KVContext(lm), window=8, ratio=4)
    assert kv.slots == 0 and kv.raw_tokens == 0


def test_choose_ratio_formula():
    # n=1000, W=32: ratio 2 keeps 31*16 + 4 = 500 slots and peaks at 480 + 48 = 528 positions.
    assert peak_positions(1000, 32, 2) == 528
    assert choose_ratio(1000, 0, 32, max_positions=600, reserve=100) == 2
    assert choose_ratio(1000, 0, 32, max_positions=600, reserve=101) == 4
    assert choose_ratio(1000, 50, 32, max_positions=600, reserve=100) == 4  # the context takes room too
    assert choose_ratio(10**6, 0, 32, max_positions=600, reserve=0) == 32  # nothing fits: the largest
    assert choose_ratio(100, 0, 8, max_positions=4096, reserve=0) == 2
    assert choose_ratio(10**4, 0, 8, max_positions=4096, reserve=0, candidates=(2, 4, 8, 16, 32)) == 4


def test_grad_path_reaches_earlier_beacons(tiny_models):
    """With ``grad=True`` gradients flow through cached beacon K/V into earlier windows' parameters."""
    lm = tiny_models["llama"]
    plugin = perturbed_plugin(lm).requires_grad_(True)
    ids = random_ids(20, seed=4)
    context = exact_context(lm, ids[:4])  # built under inference mode, as the engine builds it
    kv = compress_segment(lm, plugin, ids[4:], context, window=8, ratio=4, grad=True)
    # Only the second window's last-layer values: they depend on window 1's beacons through attention.
    kv.values[-1, :, 2:].sum().backward()
    assert plugin.beacon_embed.grad is not None and plugin.beacon_embed.grad.abs().sum() > 0
    assert plugin.layers[0].beacon_k_proj.weight.grad.abs().sum() > 0
    plain = compress_segment(lm, plugin, ids[4:], context, window=8, ratio=4)
    torch.testing.assert_close(kv.keys.detach().cpu(), plain.keys, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- plug-in weights


def test_plugin_initialisation(tiny_models):
    lm = tiny_models["qwen2"]
    plugin = BeaconPlugin.from_model(lm)
    attn = lm.model.model.layers[1].self_attn
    torch.testing.assert_close(plugin.layers[1].beacon_k_proj.weight, attn.k_proj.weight)
    torch.testing.assert_close(plugin.layers[1].beacon_q_proj.bias, attn.q_proj.bias)  # Qwen2 has q/k/v bias
    assert plugin.layers[0].beacon_o_proj is None
    eos = lm.config.eos_token_id
    torch.testing.assert_close(plugin.beacon_embed[0], lm.model.model.embed_tokens.weight[eos])
    llama = BeaconPlugin.from_model(tiny_models["llama"], with_o=True)
    assert llama.layers[0].beacon_q_proj.bias is None and llama.layers[0].beacon_o_proj is not None


def test_plugin_save_load_round_trip(tiny_models, tmp_path):
    lm = tiny_models["qwen2"]
    plugin = perturbed_plugin(lm)
    digest = plugin.digest()
    assert digest != BeaconPlugin.from_model(lm).digest()
    plugin.save(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "beacon_config.json").read_text())
    assert config["base_fingerprint"] == lm.fingerprint and config["family"] == "qwen2"
    loaded = BeaconPlugin.load(tmp_path / "p", lm)
    assert loaded.digest() == digest
    ids = random_ids(12, seed=9)
    a = compress_segment(lm, plugin, ids, KVContext(lm), window=8, ratio=2)
    b = compress_segment(lm, loaded, ids, KVContext(lm), window=8, ratio=2)
    assert torch.equal(a.keys, b.keys)
    with torch.no_grad():
        loaded.layers[0].beacon_v_proj.weight[0, 0] += 1e-3
    assert loaded.digest() != digest

    with pytest.raises(BeaconWeightsError, match="num_layers"):
        BeaconPlugin.load(tmp_path / "p", _three_layer_qwen2(lm))
    with pytest.raises(BeaconWeightsError, match="family"):
        BeaconPlugin.load(tmp_path / "p", tiny_models["llama"])


def _three_layer_qwen2(lm: LoadedModel) -> LoadedModel:
    from transformers import AutoModelForCausalLM, Qwen2Config

    from beacon_rag.models import model_from_objects

    config = Qwen2Config(vocab_size=lm.config.vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         use_sliding_window=False)
    return model_from_objects(AutoModelForCausalLM.from_config(config), lm.tokenizer, name="three-layer")


def test_plugin_load_detects_tampering(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    lm = tiny_models["llama"]
    perturbed_plugin(lm).save(tmp_path)
    tensors = load_file(str(tmp_path / "beacon.safetensors"))
    tensors["beacon_embed"] = tensors["beacon_embed"] + 1
    save_file(tensors, str(tmp_path / "beacon.safetensors"))
    with pytest.raises(BeaconWeightsError, match="digest"):
        BeaconPlugin.load(tmp_path, lm)
    del tensors["layers.1.beacon_k_proj.weight"]
    save_file(tensors, str(tmp_path / "beacon.safetensors"))
    with pytest.raises(BeaconWeightsError, match=r"missing \['layers.1.beacon_k_proj.weight'\]"):
        BeaconPlugin.load(tmp_path, lm)


@pytest.mark.parametrize("family,with_o", [("qwen2", False), ("llama", True), ("mistral", False)])
def test_official_state_dict(tiny_models, tmp_path, family, with_o):
    lm = tiny_models[family]
    plugin = perturbed_plugin(lm, with_o=with_o)
    official = plugin.to_official_state_dict()
    full = {**{f"model.{k}": v for k, v in lm.model.model.state_dict().items()}, **official}
    assert "model.layers.0.self_attn.q_proj.weight" in full
    loaded = BeaconPlugin.from_official_state_dict(full, lm)
    assert loaded.digest() == plugin.digest()  # every beacon tensor landed in its place
    assert loaded.with_o == with_o
    if family == "qwen2":
        assert "model.layers.1.self_attn.beacon_v_proj.bias" in official

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in full.items()}, str(tmp_path / "model-00001-of-00001.safetensors"))
    assert BeaconPlugin.from_official_checkpoint(tmp_path, lm).digest() == plugin.digest()


def test_official_state_dict_errors(tiny_models):
    lm = tiny_models["llama"]
    official = perturbed_plugin(lm).to_official_state_dict()

    missing = dict(official)
    del missing["model.layers.1.self_attn.beacon_k_proj.weight"]
    del missing["model.beacon_embed_tokens.weight"]
    with pytest.raises(BeaconWeightsError, match="missing") as err:
        BeaconPlugin.from_official_state_dict(missing, lm)
    assert "model.layers.1.self_attn.beacon_k_proj.weight" in str(err.value)
    assert "model.beacon_embed_tokens.weight" in str(err.value)

    for name in ("model.layers.0.self_attn.beacon_x_proj.weight",   # no such projection
                 "model.layers.5.self_attn.beacon_q_proj.weight",   # no such layer
                 "model.layers.0.self_attn.beacon_q_proj.bias",     # Llama has no q bias
                 "model.beacon_something"):
        with pytest.raises(BeaconWeightsError, match="unknown beacon tensors") as err:
            BeaconPlugin.from_official_state_dict({**official, name: torch.zeros(1)}, lm)
        assert name in str(err.value)

    partial_o = {**official, "model.layers.0.self_attn.beacon_o_proj.weight": torch.zeros(64, 64)}
    with pytest.raises(BeaconWeightsError, match="beacon_o_proj"):
        BeaconPlugin.from_official_state_dict(partial_o, lm)  # o in one layer only

    wrong_shape = {**official, "model.beacon_embed_tokens.weight": torch.zeros(2, 64)}
    with pytest.raises(BeaconWeightsError, match="shape"):
        BeaconPlugin.from_official_state_dict(wrong_shape, lm)


# ---------------------------------------------------------------------------- the compressor


def test_compressor_spec_and_untrained_plugin(tiny_models, tmp_path):
    lm = tiny_models["mistral"]
    comp = BeaconCompressor(ratio=4, window=8)
    assert isinstance(comp, Compressor) and comp.name == "beacon"
    spec = comp.spec()
    assert spec == {"name": "beacon", "ratio": 4, "window": 8, "sink": 0, "plugin": UNTRAINED_ID, "untrained": True}
    json.dumps(spec)
    ids = random_ids(20, seed=6)
    kv = comp.compress(lm, ids, KVContext(lm))
    assert kv.slots == slot_count(20, 8, 4) and kv.raw_tokens == 20
    assert untrained_plugin(lm) is untrained_plugin(lm)  # built once per model
    expected = compress_segment(lm, BeaconPlugin.from_model(lm), ids, KVContext(lm), window=8, ratio=4)
    assert torch.equal(kv.keys, expected.keys)

    plugin = perturbed_plugin(lm)
    plugin.save(tmp_path)
    from_path = BeaconCompressor(ratio=4, window=8, sink=1, plugin=tmp_path)
    assert from_path.spec()["plugin"] == plugin.digest()
    from_object = BeaconCompressor(ratio=4, window=8, sink=1, plugin=plugin)
    assert from_object.spec() == from_path.spec()
    torch.testing.assert_close(from_path.compress(lm, ids, KVContext(lm)).keys,
                               from_object.compress(lm, ids, KVContext(lm)).keys)


def test_compressor_warns_at_a_ratio_the_plugin_was_not_trained_at(tiny_models, caplog):
    lm = tiny_models["llama"]
    plugin = perturbed_plugin(lm)
    plugin.config["ratios"] = [2, 4]
    ids = random_ids(32, seed=3)
    with caplog.at_level("WARNING", logger="beacon_rag.compressors.beacon"):
        BeaconCompressor(ratio=4, window=8, plugin=plugin).compress(lm, ids, KVContext(lm))
        assert not caplog.records
        outside = BeaconCompressor(ratio=8, window=8, plugin=plugin)
        outside.compress(lm, ids, KVContext(lm))
        outside.compress(lm, ids, KVContext(lm))
    assert [r.getMessage() for r in caplog.records] == [
        "beacon ratio 8 is outside the ratios this plug-in was trained at (2, 4): expect lower quality than at those"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="beacon_rag.compressors.beacon"):
        BeaconCompressor(ratio=0, window=8, plugin=plugin).compress(lm, ids, KVContext(lm))  # keep raw
        del plugin.config["ratios"]  # records none: not judged
        BeaconCompressor(ratio=8, window=8, plugin=plugin).compress(lm, ids, KVContext(lm))
    assert not caplog.records


def test_compressor_adapt(tiny_models):
    small = tiny_model("llama", tiny_models["llama"].tokenizer, max_positions=64)
    comp = BeaconCompressor(ratio="adapt", window=8, reserve=16)
    assert comp.spec()["ratio"] == "adapt" and comp.spec()["reserve"] == 16
    assert comp.resolve_ratio(small, 40, 0) == 2      # 20 slots + 16 <= 64
    assert comp.resolve_ratio(small, 100, 0) == 4     # 50 + 16 > 64; 25 + 16 fits
    assert comp.resolve_ratio(small, 100, 30) == 8    # 30 + 25 + 16 > 64; 30 + 13 + 16 fits
    kv = comp.compress(small, random_ids(100), KVContext(small))
    assert kv.slots == 25 and kv.info["ratio"] == 4


def test_compressor_validation():
    with pytest.raises(ValueError, match="2, 4, 8, 16, 32"):
        BeaconCompressor(ratio=3, window=12)
    with pytest.raises(ValueError, match="2, 4, 8, 16, 32"):
        BeaconCompressor(ratio="fast")
    with pytest.raises(ValueError, match="multiple of ratio"):
        BeaconCompressor(ratio=8, window=12)
    with pytest.raises(ValueError, match="window"):
        BeaconCompressor(ratio=2, window=0)
    with pytest.raises(ValueError, match="sink"):
        BeaconCompressor(ratio=2, window=8, sink=-1)
    with pytest.raises(ValueError, match="sink"):
        BeaconCompressor(ratio=2, window=8, sink=9)
    with pytest.raises(ValueError, match="adapt"):
        BeaconCompressor(ratio="adapt", window=7)
    BeaconCompressor(ratio=0, window=7)  # keep raw: any window


def test_compress_refuses_mismatched_plugin(tiny_models):
    lm = tiny_models["llama"]
    plugin = perturbed_plugin(lm).to(torch.float64)
    with pytest.raises(ValueError, match="float64"):
        compress_segment(lm, plugin, [1, 2, 3], KVContext(lm), window=8, ratio=2)
    with pytest.raises(BeaconWeightsError, match="does not fit"):
        other = BeaconPlugin.from_model(_three_layer_qwen2(lm))
        compress_segment(lm, other, [1, 2, 3], KVContext(lm), window=8, ratio=2)


def test_engine_with_beacon_compressor(tiny_models, tmp_path):
    """Through the engine: compressed segments are stored, reloaded from disk, and answer identically."""
    from beacon_rag import Engine, rag_messages

    lm = tiny_models["qwen2"]
    docs = ["The ferry leaves the harbor at seven and returns at noon. " * 3,
            "The lighthouse keeper paints the tower red every spring. " * 3]
    messages = rag_messages("When does the ferry leave?", docs)
    compressor = BeaconCompressor(ratio=4, window=16, plugin=perturbed_plugin(lm))
    cold = Engine(lm, compressor=compressor, cache_dir=tmp_path).generate(messages, max_new_tokens=5)
    engine = Engine(lm, compressor=compressor, cache_dir=tmp_path)
    warm = engine.generate(messages, max_new_tokens=5)
    assert {u.source for u in warm.segments} == {"disk"}
    assert warm.token_ids == cold.token_ids
    prepared = engine.prepare(messages)
    raw = sum(u.raw_tokens for u in cold.segments)
    assert prepared.context.raw_tokens == raw and prepared.context.length < raw / 2


# --------------------------------------------------------------------------- verbatim tokens (keep_raw)
def test_verbatim_mask_flags_digits_and_where_numbers_end(tiny_models):
    lm = tiny_models["llama"]
    ids = lm.encode("The pass key is 32275. Room 12 opens at noon.")
    tokens = lm.tokenizer.convert_ids_to_tokens(ids)
    digits = verbatim_mask(lm, ids, "digits")
    assert [t for t, flag in zip(tokens, digits) if flag] == [t for t in tokens if any(c.isdigit() for c in t)]
    assert "".join(t for t, flag in zip(tokens, digits) if flag).replace("Ġ", "") == "3227512"
    numbers = verbatim_mask(lm, ids, "numbers")
    ends = [i for i, (d, n) in enumerate(zip(digits, numbers)) if n and not d]
    assert len(ends) == 2 and all(digits[i - 1] and not digits[i] for i in ends)  # one after each number
    with pytest.raises(ValueError, match="keep must be one of"):
        verbatim_mask(lm, ids, "names")


def _layer0_values(lm: LoadedModel, plugin: BeaconPlugin, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-0 values of each raw token and of a beacon: functions of the token alone (no attention yet)."""
    layer = lm.model.model.layers[0]
    with torch.no_grad():
        raw = layer.self_attn.v_proj(layer.input_layernorm(lm.model.model.embed_tokens(torch.tensor(ids))))
        beacon = plugin.layers[0].projection("v")(layer.input_layernorm(plugin.beacon_embed.to(raw.dtype)))
    heads = (lm.num_kv_heads, lm.head_dim)
    return raw.view(len(ids), *heads).transpose(0, 1), beacon.view(1, *heads).transpose(0, 1)


@pytest.mark.parametrize("sink,context_len", [(1, 0), (0, 5)])
def test_keep_raw_keeps_the_flagged_tokens_in_sequence_order_among_the_beacons(tiny_models, sink, context_len):
    lm = tiny_models["llama"]
    plugin = perturbed_plugin(lm)
    ids = random_ids(37, seed=11)
    context = exact_context(lm, random_ids(context_len, seed=12))
    flags = [False] * 37
    for i in (0, 3, 4, 15, 16, 30, 36):  # the sink token, a run, both sides of a window edge, the last token
        flags[i] = True
    kv = compress_segment(lm, plugin, ids, context, window=16, ratio=4, sink=sink, keep_raw=flags)
    sink_kept = sink if context_len == 0 else 0
    verbatim = sum(flags[sink_kept:])
    assert kv.slots == slot_count(37, 16, 4, sink, context_len, keep_raw=flags) == slot_count(37, 16, 4, sink, context_len) + verbatim
    assert kv.info["verbatim"] == verbatim and kv.info["beacons"] == slot_count(37, 16, 4) and kv.info["sink"] == sink_kept
    # Expected memory order, window by window: kept raw tokens and beacons as they sit in the sequence.
    raw_values, beacon_value = _layer0_values(lm, plugin, ids)
    expected = []
    for start in range(0, 37, 16):
        position = start
        for is_beacon in beacon_layout(min(16, 37 - start), 4):
            if is_beacon:
                expected.append(beacon_value[:, 0])
            else:
                if flags[position] or position < sink_kept:
                    expected.append(raw_values[:, position])
                position += 1
    torch.testing.assert_close(kv.values[0], torch.stack(expected, dim=1), atol=1e-5, rtol=1e-5)
    # The kept slots extend what a plain model can read: the continuation still runs.
    assert torch.isfinite(next_logits(lm, context, kv, random_ids(3, seed=13))).all()


def test_keep_raw_without_flags_changes_nothing_and_checks_its_length(tiny_models):
    lm = tiny_models["qwen2"]
    plugin = perturbed_plugin(lm)
    ids = random_ids(29, seed=14)
    plain = compress_segment(lm, plugin, ids, KVContext(lm), window=8, ratio=4, sink=1)
    unflagged = compress_segment(lm, plugin, ids, KVContext(lm), window=8, ratio=4, sink=1, keep_raw=[False] * 29)
    assert torch.equal(plain.keys, unflagged.keys) and torch.equal(plain.values, unflagged.values)
    raw = compress_segment(lm, plugin, ids, KVContext(lm), window=8, ratio=0, keep_raw=[True] * 29)
    assert raw.slots == 29 and raw.info["verbatim"] == 0  # ratio 0 keeps every token anyway
    with pytest.raises(ValueError, match="keep_raw has 3 flags for 29 tokens"):
        compress_segment(lm, plugin, ids, KVContext(lm), window=8, ratio=4, keep_raw=[True] * 3)


def test_later_windows_read_the_kept_tokens(tiny_models):
    """A kept token is memory for the windows after it: their beacons change when it is kept."""
    lm = tiny_models["mistral"]
    plugin = perturbed_plugin(lm)
    ids = random_ids(32, seed=15)
    flags = [i == 5 for i in range(32)]
    plain = compress_segment(lm, plugin, ids, KVContext(lm), window=16, ratio=4)
    kept = compress_segment(lm, plugin, ids, KVContext(lm), window=16, ratio=4, keep_raw=flags)
    first_window = [0, 2, 3, 4]  # slot 1 of `kept` is token 5, which follows the first beacon
    torch.testing.assert_close(kept.keys[:, :, first_window], plain.keys[:, :, :4], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(kept.keys[:, :, 5:], plain.keys[:, :, 4:], atol=1e-4)


def test_choose_ratio_counts_the_kept_tokens():
    flags = [i % 2 == 0 for i in range(1000)]  # half the tokens kept: ratio 2's 500 slots become 1000
    assert choose_ratio(1000, 0, 32, max_positions=600, reserve=100) == 2
    assert choose_ratio(1000, 0, 32, max_positions=600, reserve=100, keep_raw=flags) == 32  # nothing fits
    assert peak_positions(1000, 32, 2, keep_raw=flags) > peak_positions(1000, 32, 2)


def test_compressor_keep_option(tiny_models, tmp_path):
    lm = tiny_models["llama"]
    ids = lm.encode("Codes: 4471 for the mill, 9032 for the quarry office, and 1185 for the kiln.")
    plain = BeaconCompressor(ratio=4, window=8)
    digits = BeaconCompressor(ratio=4, window=8, keep="digits")
    assert "keep" not in plain.spec()  # keys of caches built before the option stay as they were
    assert digits.spec() == {**plain.spec(), "keep": "digits"}
    kv = digits.compress(lm, ids, KVContext(lm))
    assert kv.slots == slot_count(len(ids), 8, 4, keep_raw=verbatim_mask(lm, ids, "digits"))
    assert kv.slots > plain.compress(lm, ids, KVContext(lm)).slots
    with pytest.raises(ValueError, match="keep must be one of digits, numbers"):
        BeaconCompressor(ratio=4, window=8, keep="words")


def test_a_plugin_trained_with_verbatim_tokens_keeps_them_unless_told_not_to(tiny_models, tmp_path):
    lm = tiny_models["llama"]
    plugin = BeaconPlugin.from_model(lm)
    plugin.config.update(window=32, keep="numbers")
    folder = plugin.save(tmp_path / "trained")
    for given in (folder, str(folder), plugin):
        engine = Engine(lm, compressor="beacon", compressor_options={"ratio": 4, "plugin": given}, persist=False)
        assert engine.compressor.spec()["keep"] == "numbers"
    off = Engine(lm, compressor="beacon", compressor_options={"ratio": 4, "plugin": folder, "keep": None}, persist=False)
    assert "keep" not in off.compressor.spec()
    other = Engine(lm, compressor="beacon", compressor_options={"ratio": 4, "plugin": folder, "keep": "digits"},
                   persist=False)
    assert other.compressor.spec()["keep"] == "digits"


# --------------------------------------------------------------------------- raw tail (the live window)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("context_len", [0, 5])
def test_tail_is_a_plain_prefill_after_the_older_tokens_beacons(tiny_models, family, context_len):
    """The tail's slots are exactly the plain model's K/V after [context | older tokens' beacons],
    the older tokens' slots exactly what compressing them alone gives, and the next token's
    logits follow from that memory."""
    lm = tiny_models[family]
    plugin = perturbed_plugin(lm)
    ids, tail = random_ids(45, seed=3), 7
    context = exact_context(lm, random_ids(context_len, seed=4))
    kv = BeaconCompressor(ratio=4, window=16, sink=1, plugin=plugin, tail=tail).compress(lm, ids, context)
    older = compress_segment(lm, plugin, ids[:-tail], context, window=16, ratio=4, sink=1)
    memory = context.copy()
    memory.append(older)
    tail_keys, tail_values = prefill_pre_rope(lm, ids[-tail:], memory)
    assert kv.slots == older.slots + tail and kv.raw_tokens == len(ids)
    assert torch.equal(kv.keys, torch.cat([older.keys, tail_keys], dim=2))
    assert torch.equal(kv.values, torch.cat([older.values, tail_values], dim=2))
    assert kv.info == {**older.info, "tail": tail}
    # The tail really saw the beacons: without them its keys differ.
    alone, _ = prefill_pre_rope(lm, ids[-tail:], context)
    assert not torch.allclose(alone, tail_keys)
    after_tail = next_logits(lm, context, kv, ids[:1])
    after_older = next_logits(lm, context, older, ids[-tail:] + ids[:1])
    torch.testing.assert_close(after_tail[-1], after_older[-1], rtol=1e-4, atol=1e-4)


def test_a_tail_as_long_as_the_segment_keeps_it_all_raw(tiny_models):
    lm = tiny_models["llama"]
    ids = random_ids(12, seed=5)
    kv = BeaconCompressor(ratio=4, window=8, plugin=perturbed_plugin(lm), tail=50).compress(lm, ids, KVContext(lm))
    keys, values = prefill_pre_rope(lm, ids, KVContext(lm))
    assert kv.slots == 12 and torch.equal(kv.keys, keys) and torch.equal(kv.values, values)
    assert kv.info["tail"] == 12 and kv.info["beacons"] == 0


def test_tail_option_spec_adapt_and_validation(tiny_models):
    plain = BeaconCompressor(ratio=4, window=8)
    tailed = BeaconCompressor(ratio=4, window=8, tail=16)
    assert "tail" not in plain.spec()  # keys of caches built before the option stay as they were
    assert tailed.spec() == {**plain.spec(), "tail": 16}
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match="tail must be a whole number"):
            BeaconCompressor(ratio=4, window=8, tail=bad)  # type: ignore[arg-type]
    # adapt leaves room for the tail's raw slots after the older tokens' beacons
    small = tiny_model("llama", tiny_models["llama"].tokenizer, max_positions=40)
    adapt = BeaconCompressor(ratio="adapt", window=8, reserve=16, tail=10)
    assert adapt.resolve_ratio(small, 40, 0) == 2                  # 20 + 16 <= 40
    assert adapt.resolve_ratio(small, 40, 0, after=10) == 4        # 20 + 10 + 16 > 40; 10 + 10 + 16 fits
    kv = adapt.compress(small, random_ids(50), KVContext(small))   # 40 older tokens, 10 raw
    assert kv.info["ratio"] == 4 and kv.slots == 10 + 10


def test_engine_options_pass_the_tail_and_refuse_it_elsewhere(tiny_models):
    lm = tiny_models["llama"]
    engine = Engine(lm, compressor="beacon", compressor_options={"ratio": 4, "window": 8, "tail": 6}, persist=False)
    assert engine.compressor.spec()["tail"] == 6
    with pytest.raises(ValueError, match="does not accept"):
        Engine(lm, compressor="streaming", compressor_options={"ratio": 4, "tail": 6}, persist=False)
