"""Training-free eviction baselines (streaming, knorm) and the quality bench, on tiny random models.

Tiny models check mechanics only (which slots are kept, that every task runs end to end and
reports every field); what the methods are worth in answers is measured on the embedded model
by the bench itself.
"""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from beacon_rag.bench import quality
from beacon_rag.compressors import prefill_pre_rope
from beacon_rag.compressors.knorm import KnormCompressor
from beacon_rag.compressors.streaming import StreamingCompressor
from beacon_rag.engine import Engine
from beacon_rag.kv import KVContext
from beacon_rag.models import LoadedModel
from tests.helpers.cli import parse_cli

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def lm(tiny_models) -> LoadedModel:
    return tiny_models["llama"]


def random_ids(n: int, seed: int = 0) -> list[int]:
    return torch.randint(10, 5000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def context_of(lm: LoadedModel, ids: list[int]) -> KVContext:
    """A non-empty context, so the compressors are checked in chained use, not only at position 0."""
    context = KVContext(lm)
    if ids:
        context.append(StreamingCompressor(1).compress(lm, ids, KVContext(lm)))
    return context


# --------------------------------------------------------------------------- compressors
@pytest.mark.parametrize("n,ratio,sink", [(37, 8, 4), (37, 3, 4), (64, 4, 0), (3, 8, 4), (10, 2.5, 2), (1, 8, 4)])
def test_streaming_keeps_sinks_and_recent(lm, n, ratio, sink):
    ids, prefix = random_ids(n, seed=n), random_ids(5, seed=99)
    keys, values = prefill_pre_rope(lm, ids, context_of(lm, prefix))
    kv = StreamingCompressor(ratio, sink=sink).compress(lm, ids, context_of(lm, prefix))
    kept = math.ceil(n / ratio)
    head = min(sink, kept)
    expected = list(range(head)) + list(range(n - (kept - head), n))
    assert kv.slots == kept and kv.raw_tokens == n
    assert len(set(expected)) == kept
    torch.testing.assert_close(kv.keys, keys[:, :, expected], rtol=0, atol=0)
    torch.testing.assert_close(kv.values, values[:, :, expected], rtol=0, atol=0)


@pytest.mark.parametrize("n,ratio", [(37, 8), (40, 4), (5, 2), (1, 8), (33, 1.5)])
def test_knorm_keeps_lowest_key_norm_per_layer_in_order(lm, n, ratio):
    ids, prefix = random_ids(n, seed=n + 1), random_ids(4, seed=7)
    keys, values = prefill_pre_rope(lm, ids, context_of(lm, prefix))
    kv = KnormCompressor(ratio).compress(lm, ids, context_of(lm, prefix))
    kept = math.ceil(n / ratio)
    assert kv.slots == kept and kv.raw_tokens == n
    choices = set()
    for layer in range(keys.shape[0]):
        # direct computation: mean over KV heads of each token's key L2 norm, lowest first
        norms = [float(keys[layer, :, t].norm(dim=-1).mean()) for t in range(n)]
        chosen = sorted(sorted(range(n), key=lambda t: (norms[t], t))[:kept])
        choices.add(tuple(chosen))
        torch.testing.assert_close(kv.keys[layer], keys[layer][:, chosen], rtol=0, atol=0)
        torch.testing.assert_close(kv.values[layer], values[layer][:, chosen], rtol=0, atol=0)
        dropped = [t for t in range(n) if t not in chosen]
        if dropped:
            assert max(norms[t] for t in chosen) <= min(norms[t] for t in dropped) + 1e-6
    if n >= 33:  # random layers rank tokens differently: knorm's choice is per layer
        assert len(choices) == keys.shape[0]


@pytest.mark.parametrize("make", [lambda: StreamingCompressor(1), lambda: KnormCompressor(1),
                                  lambda: StreamingCompressor(1.0, sink=0), lambda: KnormCompressor(1.0)])
def test_ratio_one_is_exact(lm, make):
    ids, prefix = random_ids(21, seed=3), random_ids(6, seed=4)
    keys, values = prefill_pre_rope(lm, ids, context_of(lm, prefix))
    kv = make().compress(lm, ids, context_of(lm, prefix))
    torch.testing.assert_close(kv.keys, keys, rtol=0, atol=0)
    torch.testing.assert_close(kv.values, values, rtol=0, atol=0)


def test_ratio_at_least_length_keeps_one_token(lm):
    ids = random_ids(7, seed=5)
    assert StreamingCompressor(100).compress(lm, ids, KVContext(lm)).slots == 1
    assert KnormCompressor(100).compress(lm, ids, KVContext(lm)).slots == 1
    assert StreamingCompressor(8).compress(lm, [], KVContext(lm)).slots == 0
    assert KnormCompressor(8).compress(lm, [], KVContext(lm)).slots == 0


@pytest.mark.parametrize("bad", [0, 0.5, -2, "adapt", "8", True, float("nan"), float("inf"), None])
def test_bad_ratios_fail_clearly(bad):
    for cls in (StreamingCompressor, KnormCompressor):
        with pytest.raises(ValueError, match="ratio"):
            cls(bad)


def test_bad_sink_and_specs():
    with pytest.raises(ValueError, match="sink"):
        StreamingCompressor(4, sink=-1)
    assert StreamingCompressor(4).spec() == {"name": "streaming", "ratio": 4, "sink": 4}
    assert StreamingCompressor(2.0, sink=0).spec() == {"name": "streaming", "ratio": 2, "sink": 0}
    assert KnormCompressor(2.5).spec() == {"name": "knorm", "ratio": 2.5}


def test_engine_places_evicted_segments(lm):
    """Through the engine, each cached segment keeps ceil(n / ratio) slots and the answer decodes."""
    messages = quality.rag_messages("What is it?", ["alpha beta gamma " * 20, "delta epsilon " * 15])
    for compressor in (StreamingCompressor(4), KnormCompressor(4)):
        engine = Engine(lm, compressor=compressor, persist=False)
        prepared = engine.prepare(messages)
        assert prepared.context.length == sum(math.ceil(u.raw_tokens / 4) for u in prepared.uses)
        assert prepared.context.raw_tokens == sum(u.raw_tokens for u in prepared.uses)
        assert engine.generate(messages, max_new_tokens=3).usage.output_tokens <= 3


# --------------------------------------------------------------------------- task generators
@pytest.mark.parametrize("task", ["passkey", "rag-qa", "multiturn"])
def test_qa_generators_deterministic_and_answer_present(lm, task):
    first = quality.make_examples(task, lm, 3, 96, seed=1)
    again = quality.make_examples(task, lm, 3, 96, seed=1)
    other = quality.make_examples(task, lm, 3, 96, seed=2)
    assert first == again
    assert first != other
    for example in first:
        assert example.answer in example.context_text
        contents = "".join(b.text for m in example.messages for b in m.blocks())
        assert example.context_text in contents
        assert quality.answer_correct(f"It is {example.answer}.", example.answer)
        # the no-context prompt must not leak the answer, and the question itself must not hold it
        assert example.answer not in "".join(b.text for m in example.none_messages for b in m.blocks())
        assert example.answer not in "".join(b.text for b in example.messages[-1].blocks()[-1:])


def test_rotated_rag_examples_move_the_asked_document_through_every_position(lm):
    """``--rotate``: each drawn example comes back once per position of the asked document, the
    other documents in their drawn order, and the drawn layout is one of them."""
    docs = 3
    drawn = quality.make_examples("rag-qa", lm, 2, 96, seed=1, docs=docs)
    rotated = quality.make_examples("rag-qa", lm, 2, 96, seed=1, docs=docs, rotate=True)
    assert len(rotated) == 2 * docs
    for example, group in zip(drawn, (rotated[:docs], rotated[docs:])):
        layout = [b.text for b in example.messages[-1].blocks() if b.document]
        others = [text for text in layout if example.context_text.strip() not in text]
        assert len(others) == docs - 1
        assert any(member.messages == example.messages for member in group)
        for position, member in enumerate(group):
            assert (member.answer, member.none_messages, member.context_text) == \
                (example.answer, example.none_messages, example.context_text)
            texts = [b.text for b in member.messages[-1].blocks() if b.document]
            assert sorted(texts) == sorted(layout)
            assert example.context_text.strip() in texts[position]
            assert [t for i, t in enumerate(texts) if i != position] == others
    with pytest.raises(ValueError, match="rotate applies to rag-qa only, not passkey"):
        quality.make_examples("passkey", lm, 2, 96, rotate=True)


def test_accuracy_by_position_reads_the_rotation_order():
    tally = quality._Tally(scores=[1.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # two drawn examples, three positions
    assert quality._by_position(tally, 3) == [1.0, 0.0, 0.5]
    assert quality._by_position(tally, 2) == [pytest.approx(2 / 3), pytest.approx(1 / 3)]


def test_passkey_length_close_to_requested(lm):
    for example in quality.make_passkey_examples(lm, 3, 200, seed=0):
        assert abs(len(lm.encode(example.context_text)) - 200) <= 20


def test_lm_generator_is_contiguous_heldout(lm):
    examples = quality.make_lm_examples(lm, 3, 50, 16, seed=0)
    assert examples == quality.make_lm_examples(lm, 3, 50, 16, seed=0)
    corpus = quality.heldout_ids(lm)
    for example in examples:
        assert len(example.context_ids) == 50 and len(example.continuation_ids) == 17
        joined = example.context_ids + example.continuation_ids
        assert any(corpus[i : i + len(joined)] == joined for i in range(len(corpus) - len(joined))
                   if corpus[i] == joined[0])


def test_insert_at_depth():
    text = "One. Two. Three. Four."
    assert quality.insert_at_depth(text, "X.", 0.0).startswith("X. One.")
    assert quality.insert_at_depth(text, "X.", 1.0).endswith("Four. X.")
    assert "Two. X. Three." in quality.insert_at_depth(text, "X.", 0.4)
    assert quality.insert_at_depth("a\nb", "X.", 0.6) == "a\nX.\nb"


def test_scoring_helpers():
    assert quality.answer_correct("The pass key is 12345.", "12345")
    assert not quality.answer_correct("The pass key is 123456.", "12345")
    assert not quality.answer_correct("I do not know.", "12345")
    assert quality.gap_recovered(3.0, full=2.0, none=4.0) == pytest.approx(0.5)
    assert quality.gap_recovered(2.0, full=2.0, none=4.0) == pytest.approx(1.0)
    assert quality.gap_recovered(4.0, full=2.0, none=4.0) == pytest.approx(0.0)
    assert quality.gap_recovered(5.0, full=2.0, none=2.0) is None


def test_digits_found_credits_kept_digits_in_any_order_but_not_digit_lists():
    assert quality.digits_found("The pass key is 32275.", "32275") == 1.0
    assert quality.digits_found("The pass key is 23572.", "32275") == 1.0  # right digits, wrong order
    assert quality.digits_found("The pass key is 3857.", "83597") == pytest.approx(4 / 5)
    assert quality.digits_found("The pass key is 11111.", "12345") == pytest.approx(1 / 5)  # each digit counts once
    assert quality.digits_found("It is 1234567890.", "12345") == pytest.approx(5 / 10)  # no credit for listing all
    assert quality.digits_found("It is 67 then 12345.", "12345") == 0.0  # the first number is the answer
    assert quality.digits_found("I do not know.", "12345") == 0.0


def test_build_compressor_refuses_options_that_do_not_apply():
    assert quality.build_compressor("knorm", 4).spec() == {"name": "knorm", "ratio": 4}
    assert quality.build_compressor("beacon", 8.0).spec()["ratio"] == 8
    with pytest.raises(ValueError, match="window"):
        quality.build_compressor("streaming", 4, window=256)
    with pytest.raises(ValueError, match="ratio"):
        quality.build_compressor("exact", 4)
    with pytest.raises(ValueError, match="integer ratio"):
        quality.build_compressor("beacon", 2.5)
    with pytest.raises(ValueError, match="unknown compressor"):
        quality.build_compressor("snapkv", 4)
    assert quality.parse_quality_ratio("2.5") == 2.5 and quality.parse_quality_ratio("adapt") == "adapt"
    assert quality.build_compressor("beacon", 4, keep="digits").spec()["keep"] == "digits"
    assert "keep" not in quality.build_compressor("beacon", 4, keep="none").spec()
    with pytest.raises(ValueError, match="keep and --tail apply to the beacon compressor only"):
        quality.build_compressor("knorm", 4, keep="digits")
    with pytest.raises(ValueError, match="keep and --tail apply to the beacon compressor only"):
        quality.build_compressor("streaming", 4, tail=16)
    assert quality.build_compressor("beacon", 8, keep="none", tail=128).spec()["tail"] == 128
    assert "tail" not in quality.build_compressor("beacon", 8, tail=0).spec()
    with pytest.raises(ValueError, match="keep must be one of digits, numbers, none"):
        quality.build_compressor("beacon", 4, keep="words")


def test_methods_name_verbatim_tokens_and_a_raw_tail():
    assert quality.parse_method("beacon:4") == ("beacon", 4, None, None, None)
    assert quality.parse_method("beacon+digits:8:some/plugin") == ("beacon", 8, "some/plugin", "digits", None)
    assert quality.parse_method("beacon+none:4:untrained") == ("beacon", 4, "untrained", "none", None)
    assert quality.parse_method("beacon+none+tail128:8") == ("beacon", 8, None, "none", 128)
    assert quality.parse_method("beacon+tail0+numbers:4").tail == 0
    for bad in ("knorm+digits:4", "beacon+words:4", "beacon+:4:x:y", "streaming+tail8:4", "beacon+tail:4",
                "beacon+tail-3:4", "beacon+tail8+tail16:4", "beacon+digits+none:4"):
        with pytest.raises(ValueError, match="beacon"):
            quality.parse_method(bad)


# --------------------------------------------------------------------------- the bench end to end
def bench_args(*argv: str) -> argparse.Namespace:
    return parse_cli(quality.add_arguments, *argv)


@pytest.mark.parametrize("task,compressor", [
    ("passkey", "streaming"), ("rag-qa", "knorm"), ("multiturn", "beacon"), ("lm-loss", "knorm"),
    ("lm-loss", "exact"), ("passkey", "exact"),
])
def test_bench_runs_every_task(lm, task, compressor):
    argv = ["--task", task, "--compressor", compressor, "--examples", "2", "--context-tokens", "64",
            "--max-tokens", "24", "--continuation-tokens", "16", "--details"]
    if compressor != "exact":
        argv += ["--ratio", "4"]
    report = quality.run(bench_args(*argv), lm=lm)
    score_key = "loss" if task == "lm-loss" else "accuracy"
    for key in ("task", "compressor", "ratio", score_key, "full", "none", "n", "kept_slots_per_token",
                "ratio_to_full"):
        assert key in report, key
    assert report["task"] == task and report["compressor"] == compressor and report["n"] == 2
    assert len(report["per_example"]) == 2
    if compressor == "exact":
        assert report[score_key] == report["full"] and report["kept_slots_per_token"] == 1.0
    else:
        assert report["ratio"] == 4
        assert report["kept_slots_per_token"] < 0.5
    if task == "lm-loss":
        assert all(math.isfinite(report[k]) for k in ("loss", "full", "none"))
        expected = quality.gap_recovered(report["loss"], report["full"], report["none"])
        assert report["gap_recovered"] == pytest.approx(expected)
        assert report["ratio_to_full"] == pytest.approx(math.exp(report["full"] - report["loss"]))
    else:
        assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["none"] <= 1.0
        # digits_found is the mean over the answers the report lists, per condition.
        for key, condition in (("digits_found", "method"), ("full_digits_found", "full"), ("none_digits_found", "none")):
            answers = [(row[condition], row["expected"]) for row in report["per_example"]]
            assert report[key] == pytest.approx(sum(quality.digits_found(a, e) for a, e in answers) / 2)


def test_lm_loss_ratio_one_matches_full(lm):
    report = quality.run(bench_args("--task", "lm-loss", "--compressor", "streaming", "--ratio", "1",
                                    "--examples", "2", "--context-tokens", "40", "--continuation-tokens", "8"), lm=lm)
    assert report["loss"] == pytest.approx(report["full"], abs=1e-5)
    assert report["gap_recovered"] == pytest.approx(1.0, abs=1e-4)


def test_lm_loss_live_tail_feeds_the_newest_tokens_raw_in_every_condition(lm):
    """With ``--live-tail`` the full condition still equals a plain pass over the whole stretch, the
    none condition sees only the tail, and the tail's raw slots are counted in the budget."""
    argv = ["--task", "lm-loss", "--compressor", "streaming", "--ratio", "4", "--examples", "2",
            "--context-tokens", "48", "--continuation-tokens", "8", "--live-tail", "16"]
    report = quality.run(bench_args(*argv), lm=lm)
    example = quality.make_lm_examples(lm, 2, 48, 8)[0]
    ids = torch.tensor([example.context_ids + example.continuation_ids])
    with torch.inference_mode():
        plain = lm.model(input_ids=ids).logits[0].float()
        tail_only = lm.model(input_ids=ids[:, 32:]).logits[0].float()
    full0 = torch.nn.functional.cross_entropy(plain[48:-1], ids[0, 49:]).item()
    none0 = torch.nn.functional.cross_entropy(tail_only[16:-1], ids[0, 49:]).item()
    detailed = quality.run(bench_args(*argv, "--details"), lm=lm)
    assert detailed["per_example"][0]["full"] == pytest.approx(full0, abs=1e-4)
    assert detailed["per_example"][0]["none"] == pytest.approx(none0, abs=1e-4)
    # streaming at 4 keeps a quarter of the 32 older tokens (8), plus the 16 raw ones: 24 of 48
    assert report["live_tail"] == 16 and report["kept_slots_per_token"] == pytest.approx(24 / 48)
    assert report["loss"] != pytest.approx(quality.run(bench_args(*argv[:-2]), lm=lm)["loss"])
    with pytest.raises(ValueError, match="leaves nothing to compress"):
        quality.run(bench_args(*argv[:-1], "48"), lm=lm)
    with pytest.raises(SystemExit):
        bench_args(*argv[:-1], "-1")


@pytest.mark.parametrize("methods", [[], ["--methods", "streaming:4"]])
def test_options_a_qa_task_would_ignore_are_refused(methods):
    """``--live-tail`` only shapes lm-loss; on a QA task it would be silently dropped from the figure.
    No model is passed: the refusal must come before one would load."""
    with pytest.raises(ValueError, match="--live-tail applies to --task lm-loss only, not passkey"):
        quality.run(bench_args("--task", "passkey", "--live-tail", "8", *methods))
    with pytest.raises(ValueError, match="--max-tokens must be >= 1"):
        quality.run(bench_args("--task", "rag-qa", "--max-tokens", "0", *methods))
    with pytest.raises(ValueError, match="--rotate applies to --task rag-qa only, not lm-loss"):
        quality.run(bench_args("--task", "lm-loss", "--rotate", *methods))


@pytest.mark.parametrize("methods", [["--compressor", "knorm", "--ratio", "4"], ["--methods", "knorm:4,streaming:8"]])
def test_rotated_bench_reports_every_position(lm, methods):
    report = quality.run(bench_args("--task", "rag-qa", "--examples", "2", "--context-tokens", "64", "--rotate",
                                    "--max-tokens", "24", "--details", *methods), lm=lm)
    assert report["n"] == 6 and report["rotated"] is True and report["docs"] == 3
    assert len(report["per_example"]) == 6
    rows = report["methods"] if "methods" in report else [{**report, "score": report["accuracy"]}]
    for row in [*rows, {"by_position": report["full_by_position"], "score": report["full"]}]:
        assert len(row["by_position"]) == 3
        assert sum(row["by_position"]) / 3 == pytest.approx(row["score"])


@pytest.mark.parametrize("task", ["rag-qa", "lm-loss"])
def test_matrix_rows_equal_single_method_runs(lm, task):
    common = ["--task", task, "--examples", "2", "--context-tokens", "64", "--max-tokens", "24",
              "--continuation-tokens", "16"]
    matrix = quality.run(bench_args(*common, "--details", "--methods", "streaming:4,knorm:2,beacon:4:untrained"), lm=lm)
    assert [row["method"] for row in matrix["methods"]] == ["streaming:4", "knorm:2", "beacon:4:untrained"]
    for row, single_argv in zip(matrix["methods"], [["--compressor", "streaming", "--ratio", "4"],
                                                     ["--compressor", "knorm", "--ratio", "2"],
                                                     ["--compressor", "beacon", "--ratio", "4",
                                                      "--plugin", "untrained"]]):
        single = quality.run(bench_args(*common, "--details", *single_argv), lm=lm)
        metric = "loss" if task == "lm-loss" else "accuracy"
        assert row["score"] == pytest.approx(single[metric]) and matrix["full"] == pytest.approx(single["full"])
        assert row["kept_slots_per_token"] == pytest.approx(single["kept_slots_per_token"])
        # --details on the matrix: each method's answers (or losses) under its own name, as alone.
        for together, alone in zip(matrix["per_example"], single["per_example"], strict=True):
            assert together[row["method"]] == pytest.approx(alone["method"])
            assert together["full"] == pytest.approx(alone["full"]) and together.get("expected") == alone.get("expected")
    if task != "lm-loss":
        assert all(set(r) == {"expected", "streaming:4", "knorm:2", "beacon:4:untrained", "full", "none"}
                   and isinstance(r["knorm:2"], str) for r in matrix["per_example"])
    if task != "lm-loss":
        for row in matrix["methods"]:
            answers = [(r[row["method"]], r["expected"]) for r in matrix["per_example"]]
            assert row["digits_found"] == pytest.approx(sum(quality.digits_found(a, e) for a, e in answers) / 2)
        assert "| digits found |" in quality.matrix_markdown([matrix])
    assert "| knorm:2 |" in quality.matrix_markdown([matrix])
    with pytest.raises(ValueError, match="--methods entries"):
        quality.parse_method("zip:4")
