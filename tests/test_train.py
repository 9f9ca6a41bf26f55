"""Beacon trainer: it learns, touches only the plug-in, resumes exactly; low-rank plug-ins; data.

Everything runs the real trainer code path on tiny random models (no mocks), single-threaded as in
test_beacon.py, so the file stays well under a minute on a busy 2-core machine.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys

import pytest
import torch
from conftest import tiny_model

from beacon_rag.beacon import BeaconPlugin, BeaconWeightsError, compress_segment
from beacon_rag.beacon.data import TrainingData, filler_stream, make_task_examples
from beacon_rag.beacon.train import TrainConfig, Trainer, lr_factor
from beacon_rag.kv import KVContext
from tests.helpers.cli import parse_cli

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def lm(embedded):
    # A fresh tiny model for this module: training must not share state with other tests' models.
    return tiny_model("llama", embedded.tokenizer, seed=7)


@pytest.fixture(scope="module")
def examples(lm):
    """A fixed tiny dataset: short passkey examples (real generator, held-out data never used)."""
    return make_task_examples(lm, "passkey", "train", 4, 56, seed=3)


class Fixed:
    """Cycles through a fixed list, with the indexable interface of TrainingData."""

    def __init__(self, items):
        self.items = items

    def __getitem__(self, index):
        return self.items[index % len(self.items)]

    def batch(self, index, size):
        return [self[index * size + row] for row in range(size)]


def config(tmp_path, **overrides) -> TrainConfig:
    values: dict = {"output_dir": str(tmp_path), "steps": 24, "window": 16, "ratios": (2, 4), "low_rank": 4,
                    "lr": 3e-3, "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 8, "resume": True,
                    "context_tokens": (40, 64), "target_tokens": 8}
    values.update(overrides)
    return TrainConfig(**values)


def trainer(cfg, lm, examples) -> Trainer:
    return Trainer(cfg, lm=lm, data=Fixed(examples), eval_examples=examples[:2])


def mean_loss(t: Trainer, examples) -> float:
    from beacon_rag.beacon.train import example_losses

    with torch.no_grad():
        return sum(example_losses(t.lm, t.plugin, e, window=16, ratio=4, grad=False)["lm"].item()
                   for e in examples) / len(examples)


def test_loss_decreases_and_only_plugin_changes(tmp_path, lm, examples):
    base_before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    t = trainer(config(tmp_path, steps=30, eval_every=10), lm, examples)
    plugin_before = {k: v.clone() for k, v in t.plugin.state_dict().items()}
    before = mean_loss(t, examples)
    t.run(progress=False)
    after = mean_loss(t, examples)
    assert after < before - 0.3, (before, after)
    for name, tensor in lm.model.state_dict().items():
        assert torch.equal(tensor, base_before[name]), f"base weight {name} changed"
    changed = [k for k, v in t.plugin.state_dict().items() if not torch.equal(v, plugin_before[k])]
    assert any("lora_B" in k for k in changed) and "beacon_embed" in changed
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and "eval_compressed" in records[0]
    assert {"loss", "lm_loss", "distill_loss", "tokens", "seconds", "lr"} <= set(records[1])
    evals = [r for r in records if "eval_compressed" in r]
    assert evals[-1]["eval_compressed"] < evals[0]["eval_compressed"]
    assert all("eval_full" in r and "eval_none" in r for r in evals)
    last = evals[-1]
    assert set(last["eval_gap_recovered_by_task"]) == set(last["eval_by_task"]) == {"passkey"}
    full, none = last["eval_full_by_task"]["passkey"], last["eval_none_by_task"]["passkey"]
    assert last["eval_gap_recovered_by_task"]["passkey"] == pytest.approx(
        (none - last["eval_by_task"]["passkey"]) / (none - full))
    # The pass key's digits alone: its own bounds, not the template's.
    assert set(last["eval_answer_gap_recovered_by_task"]) == {"passkey"}
    answer_none, answer_full = last["eval_answer_none_by_task"]["passkey"], last["eval_answer_full_by_task"]["passkey"]
    assert answer_none != pytest.approx(none) and answer_full != pytest.approx(full)
    assert last["eval_answer_gap_recovered_by_task"]["passkey"] == pytest.approx(
        (answer_none - last["eval_answer_by_task"]["passkey"]) / (answer_none - answer_full))
    # Teacher-forced accuracy beside the losses: the share of argmax hits on the answer's tokens and
    # of answers whose every token hits, in the three conditions.
    for metric in ("answer_token_accuracy", "answer_exact"):
        for condition in ("", "_full", "_none"):
            value = last[f"eval_{metric}{condition}_by_task"]["passkey"]
            assert 0.0 <= value <= 1.0, (metric, condition, value)
    for condition in ("", "_full", "_none"):
        assert (last[f"eval_answer_exact{condition}_by_task"]["passkey"]
                <= last[f"eval_answer_token_accuracy{condition}_by_task"]["passkey"])
    assert "answer_loss" in records[1]
    # The learning-curve PNG of issue 5 is drawn from this log.
    from beacon_rag.bench.training_curve import plot

    png = plot(tmp_path / "log.jsonl", tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    from beacon_rag.bench.training_curve import compare  # a sweep: several runs' logs side by side

    png = compare([tmp_path / "log.jsonl", tmp_path / "log.jsonl"], tmp_path / "sweep.png", tasks=("passkey",))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # By default one panel per task the evals scored: a second task makes the figure twice as wide.
    for record in records:
        if "eval_gap_recovered_by_task" in record:
            record["eval_gap_recovered_by_task"]["lm"] = 0.5
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    every_task = compare([tmp_path / "two" / "log.jsonl"], tmp_path / "every-task.png")
    width = int.from_bytes(every_task.read_bytes()[16:20], "big")  # the PNG header's IHDR width
    assert width == 2 * int.from_bytes(png.read_bytes()[16:20], "big")


def test_gap_recovered_for_losses_and_accuracies():
    """The share of the none-to-full gap recovered reads the same for losses (full below none) and
    accuracies (full above none), and a compressed figure equal to none is 0, not -0."""
    from beacon_rag.beacon.train import _by_task

    gaps = _by_task("x", [("a", 2.0, 1.0, 3.0), ("b", 0.5, 1.0, 0.0), ("c", 0.0, 1.0, 0.0), ("d", 1.0, 1.0, 1.0)])
    recovered = gaps["x_gap_recovered_by_task"]
    assert recovered["a"] == 0.5 and recovered["b"] == 0.5 and recovered["d"] is None
    assert json.dumps(recovered["c"]) == "0.0"


def test_curve_of_a_run_without_evals_shows_moving_averages(tmp_path):
    """CPU runs skip held-out evals; their curve's second panel must still carry the trend."""
    from beacon_rag.bench.training_curve import (
        SMOOTHING_STEPS,
        _moving_average,
        compare,
        plot,
        read_log,
        smoothed_losses,
    )

    assert _moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 2) == [1.0, 1.5, 2.5, 3.5, 4.5]
    rows = [{"step": i, "loss": 5.0 - i / 100, "lm_loss": 1.0, "raw_loss": 3.0,
             "answer_loss": None if i % 3 == 0 else 2.0 - i / 200} for i in range(1, 121)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot(tmp_path / "log.jsonl", tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # Runs without evals compared side by side: the same averages, against training tokens.
    for i, row in enumerate(rows):
        row["tokens"] = 100 * (i + 1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    series = smoothed_losses(read_log(tmp_path / "b" / "log.jsonl"), x="tokens")
    assert list(series) == ["next-token", "raw-token", "answer tokens"]
    answered = [r for r in rows if r["answer_loss"] is not None]
    assert series["answer tokens"] == ([r["tokens"] for r in answered],
                                       _moving_average([r["answer_loss"] for r in answered], SMOOTHING_STEPS))
    sweep = compare([tmp_path / "log.jsonl", tmp_path / "b" / "log.jsonl"], tmp_path / "sweep.png")
    assert sweep.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="nothing to compare"):
        compare([tmp_path / "c" / "log.jsonl"], tmp_path / "empty.png")
    # the PNG first and the log second (an easy swap) is refused with the usage, not a traceback
    swapped = subprocess.run([sys.executable, "-m", "beacon_rag.bench.training_curve", str(png),
                              str(tmp_path / "log.jsonl")], capture_output=True, text=True, check=False)
    assert swapped.returncode == 1 and "usage: python -m beacon_rag.bench.training_curve LOG.jsonl" in swapped.stderr


def test_resume_matches_uninterrupted_run(tmp_path, lm, examples):
    straight = trainer(config(tmp_path / "a", steps=12, checkpoint_every=6, distill_weight=0.5), lm, examples)
    straight.run(progress=False)

    first = trainer(config(tmp_path / "b", steps=12, checkpoint_every=4, distill_weight=0.5), lm, examples)
    first.run(progress=False, until=6)  # interrupted after step 6 (checkpoints at 4 and 6)
    # A new process builds a new Trainer from the same config and resumes from the newest checkpoint.
    resumed = trainer(config(tmp_path / "b", steps=12, checkpoint_every=4, distill_weight=0.5), lm, examples)
    resumed.run(progress=False)
    assert resumed.step == 12
    for (name, a), (_, b) in zip(straight.plugin.state_dict().items(), resumed.plugin.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    # The log of the resumed run continues where it stopped.
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 12


def test_time_limit_stops_with_a_checkpoint_and_resumes(tmp_path, lm, examples):
    cfg = config(tmp_path / "t", steps=12, checkpoint_every=5)
    first = trainer(cfg, lm, examples)
    last = first.run(progress=False, time_limit=0.0)  # out of time after the first step
    assert first.step == 1 and last.name.endswith("-1") and (last / "plugin").is_dir()
    resumed = trainer(config(tmp_path / "t", steps=12, checkpoint_every=5), lm, examples)
    resumed.run(progress=False, time_limit=3600)
    assert resumed.step == 12


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # qwen2: q/k/v biases (bias deltas)
def test_low_rank_init_equals_untrained_full_copy(embedded, family):
    lm = tiny_model(family, embedded.tokenizer, seed=11)
    ids = torch.randint(10, 5000, (45,), generator=torch.Generator().manual_seed(0)).tolist()
    full = BeaconPlugin.from_model(lm)
    low = BeaconPlugin.from_model(lm, low_rank=4, seed=1)
    assert low.low_rank == 4 and low.digest() != full.digest()
    a = compress_segment(lm, full, ids, KVContext(lm), window=16, ratio=4)
    b = compress_segment(lm, low, ids, KVContext(lm), window=16, ratio=4)
    assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)
    # Only the deltas (and the embedding) are stored: base weights are not part of the state.
    assert all(k.endswith(("lora_A", "lora_B", "bias_delta")) or k == "beacon_embed" for k in low.state_dict())


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # qwen2: bias deltas are carried over too
@pytest.mark.parametrize("wider", [6, None])  # a larger rank, and full-rank copies
def test_widening_a_plugin_keeps_what_it_computes_and_trains_the_new_directions(embedded, family, wider):
    lm = tiny_model(family, embedded.tokenizer, seed=11)
    ids = torch.randint(10, 5000, (45,), generator=torch.Generator().manual_seed(0)).tolist()
    trained = BeaconPlugin.from_model(lm, low_rank=3, seed=1)
    with torch.no_grad():  # stands for training: every delta away from zero
        for name, p in trained.named_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    widened = BeaconPlugin.from_model(lm, low_rank=wider, seed=2)
    widened.widen_from(trained)
    a = compress_segment(lm, trained, ids, KVContext(lm), window=16, ratio=4)
    b = compress_segment(lm, widened, ids, KVContext(lm), window=16, ratio=4)
    assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)
    if wider:  # the extra directions are live: B's new columns get gradients through A's random rows
        widened.requires_grad_(True)
        kv = compress_segment(lm, widened, ids, KVContext(lm), window=16, ratio=4, grad=True)
        (kv.keys.square().sum() + kv.values.square().sum()).backward()
        grad = widened.layers[0].projection("k").lora_B.grad
        assert grad[:, 3:].abs().sum() > 0
    with pytest.raises(BeaconWeightsError, match="smaller rank|full-rank"):
        BeaconPlugin.from_model(lm, low_rank=2, seed=3).widen_from(widened if wider is None else trained)


def test_low_rank_save_load_round_trip(tmp_path, lm):
    plugin = BeaconPlugin.from_model(lm, low_rank=3, seed=2)
    with torch.no_grad():
        for name, p in plugin.named_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    plugin.save(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "beacon_config.json").read_text())
    assert config["low_rank"] == 3
    loaded = BeaconPlugin.load(tmp_path / "p", lm)
    assert loaded.digest() == plugin.digest()
    ids = list(range(100, 140))
    a = compress_segment(lm, plugin, ids, KVContext(lm), window=16, ratio=2)
    b = compress_segment(lm, loaded, ids, KVContext(lm), window=16, ratio=2)
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    # The effective weights, as the official layout names them, are base + B @ A.
    official = loaded.to_official_state_dict()
    q = official["model.layers.0.self_attn.beacon_q_proj.weight"]
    base = lm.model.model.layers[0].self_attn.q_proj.weight
    layer = plugin.layers[0].beacon_q_proj
    assert torch.allclose(q, base + layer.lora_B @ layer.lora_A)
    # Without a model the deltas load (digest, config), but compressing says what is missing.
    unbound = BeaconPlugin.load(tmp_path / "p")
    assert unbound.digest() == plugin.digest() and not unbound.bound
    with pytest.raises(BeaconWeightsError, match="base weights"):
        unbound.layers[0].beacon_q_proj(torch.zeros(1, 1, 64))
    unbound.check_model(lm)  # what BeaconCompressor does on first use: binds the base
    c = compress_segment(lm, unbound, ids, KVContext(lm), window=16, ratio=2)
    assert torch.equal(a.keys, c.keys)


def test_data_deterministic_and_splits_disjoint(lm):
    one = make_task_examples(lm, "rag-qa", "heldout", 2, 200, seed=5)
    two = make_task_examples(lm, "rag-qa", "heldout", 2, 200, seed=5)
    assert [e.context_ids for e in one] == [e.context_ids for e in two]
    assert one[0].answer and one[0].answer in lm.decode(one[0].context_ids)
    train = make_task_examples(lm, "rag-qa", "train", 2, 200, seed=5)
    assert train[0].context_ids != one[0].context_ids
    _, train_names = filler_stream(lm, "train")
    _, heldout_names = filler_stream(lm, "heldout")
    assert train_names and heldout_names and not set(train_names) & set(heldout_names)
    data = TrainingData(lm, seed=1)
    assert data[3] == TrainingData(lm, seed=1)[3]
    for task in ("passkey", "multiturn", "lm-loss", "kv", "fact"):
        example = make_task_examples(lm, task, "train", 1, 120, seed=0)[0]
        assert abs(len(example.context_ids) - 120) <= 24, (task, len(example.context_ids))
        assert example.target_ids and (task == "lm-loss" or example.answer in lm.decode(example.target_ids))


def test_package_docs_add_training_text_and_never_held_out_text(tmp_path, lm, examples):
    """``--package-docs``: the installed packages' READMEs follow the standard library's training text;
    the held-out text, whose figures must compare across machines, refuses them."""
    from beacon_rag.beacon.data import Mixture
    from beacon_rag.bench.corpus import package_sources

    names = [name for name, _ in package_sources()]
    assert names == sorted(names) and all(name.startswith("package:") for name in names)
    assert "package:torch" in names and not any(name.startswith("package:beacon-rag") for name in names)
    plain, _ = filler_stream(lm, "train")
    more, more_names = filler_stream(lm, "train", package_docs=True)
    assert more[: len(plain)] == plain and len(more) > len(plain) + 10_000
    _, heldout_names = filler_stream(lm, "heldout")
    assert set(names) <= set(more_names) and not set(more_names) & set(heldout_names)
    with pytest.raises(ValueError, match="training text only"):
        filler_stream(lm, "heldout", package_docs=True)
    assert TrainingData(lm, seed=1, mixture=Mixture(package_docs=True)).builder.stream is more
    assert TrainingData(lm, seed=1).builder.stream is plain
    # The exported TRAINING.md says which text a plug-in was trained on.
    assert "packages' READMEs" in trainer(config(tmp_path / "docs", package_docs=True), lm, examples).training_note()
    assert "READMEs" not in trainer(config(tmp_path / "stdlib"), lm, examples).training_note()


def test_cli_arguments_build_the_config():
    from beacon_rag.beacon.train import add_arguments, config_from_args

    args = parse_cli(add_arguments, "--steps", "7", "--ratios", "2,8", "--low-rank", "0", "--context-tokens", "64,128",
                     "--tasks", '{"passkey": 1}', "--distill-weight", "0.3", "--no-resume",
                     "--raw-loss-weight", "0.5", "--init-plugin", "some/plugin", "--batch-size", "4",
                     "--answer-weight", "1.5", "--anchor-weight", "0.01", "--anchor-plugin", "other",
                     "--package-docs", "--keep", "numbers", "--segments")
    cfg = config_from_args(args)
    assert cfg.keep == "numbers" and config_from_args(parse_cli(add_arguments)).keep is None
    assert cfg.segments and not config_from_args(parse_cli(add_arguments)).segments
    assert (cfg.steps, cfg.ratios, cfg.low_rank, cfg.context_tokens) == (7, (2, 8), None, (64, 128))
    assert cfg.tasks == {"passkey": 1} and cfg.distill_weight == 0.3 and cfg.resume is False
    assert cfg.raw_loss_weight == 0.5 and cfg.init_plugin == "some/plugin" and cfg.batch_size == 4
    assert cfg.answer_weight == 1.5 and cfg.anchor_weight == 0.01 and cfg.anchor_plugin == "other"
    assert cfg.package_docs and not config_from_args(parse_cli(add_arguments)).package_docs
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    with pytest.raises(ValueError):
        TrainConfig(window=100, ratios=(8,)).check()
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0).check()
    with pytest.raises(ValueError, match="anchor_weight"):
        TrainConfig(anchor_weight=-1.0).check()
    with pytest.raises(ValueError, match="anchor_plugin needs anchor_weight"):
        TrainConfig(anchor_plugin="other").check()
    with pytest.raises(ValueError, match="keep must be one of"):
        TrainConfig(keep="words").check()


def test_raw_token_loss_with_ratio_zero_is_the_plain_models_loss(lm, examples):
    """With every window kept raw (ratio 0) the window loop is an exact prefill, so the raw-token
    loss must equal the plain model's next-token loss over the context (and the first token after)."""
    from beacon_rag.beacon.train import example_losses

    example = examples[0]
    plugin = BeaconPlugin.from_model(lm, low_rank=4, seed=0)
    losses = example_losses(lm, plugin, example, window=16, ratio=0, raw_weight=1.0, grad=False)
    ids = torch.tensor([example.context_ids + example.continuation_ids[:1]])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0, :-1].float()
    expected = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    assert losses["raw"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert losses["loss"].item() == pytest.approx(losses["lm"].item() + losses["raw"].item(), rel=1e-5)
    # Off by default: no raw term, the loss is the target loss alone.
    plain = example_losses(lm, plugin, example, window=16, ratio=0, grad=False)
    assert "raw" not in plain and plain["loss"].item() == pytest.approx(plain["lm"].item())


def test_raw_token_loss_trains_the_beacons(tmp_path, lm, examples):
    """The raw-token loss reaches the plug-in through later windows' attention to earlier beacons,
    and training on it (alone, target loss aside) lowers it."""
    from beacon_rag.beacon.train import example_losses

    t = trainer(config(tmp_path, steps=16, raw_loss_weight=1.0, checkpoint_every=16), lm, examples)

    def raw_loss() -> float:
        return sum(example_losses(lm, t.plugin, e, window=16, ratio=4, raw_weight=1.0, grad=False)["raw"].item()
                   for e in examples) / len(examples)

    before = raw_loss()
    t.run(progress=False)
    after = raw_loss()
    assert after < before - 0.05, (before, after)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(r["raw_loss"] > 0 for r in records if "raw_loss" in r)


def test_warm_start_from_a_saved_plugin(tmp_path, lm, examples):
    first = trainer(config(tmp_path / "a", steps=4, checkpoint_every=4), lm, examples)
    first.run(progress=False)
    saved = first.checkpoints()[-1] / "plugin"
    second = trainer(config(tmp_path / "b", steps=4, init_plugin=str(saved)), lm, examples)
    assert second.plugin.digest() == first.plugin.digest() and second.step == 0
    with pytest.raises(ValueError, match="low rank"):
        trainer(config(tmp_path / "c", low_rank=2, init_plugin=str(saved)), lm, examples)


def _drift(t: Trainer, start: dict[str, torch.Tensor]) -> float:
    return sum(((p - start[name]) ** 2).sum().item() for name, p in t.plugin.state_dict().items())


def test_anchor_holds_a_warm_start_near_its_plugin_and_survives_a_resume(tmp_path, lm, examples):
    first = trainer(config(tmp_path / "start", steps=4, checkpoint_every=4), lm, examples)
    first.run(progress=False)
    saved = str(first.checkpoints()[-1] / "plugin")
    start = {name: p.detach().clone() for name, p in first.plugin.state_dict().items()}

    free = trainer(config(tmp_path / "free", steps=12, init_plugin=saved), lm, examples)
    free.run(progress=False)
    held = trainer(config(tmp_path / "held", steps=12, init_plugin=saved, anchor_weight=5.0), lm, examples)
    held.run(progress=False)
    # Same data, same seed, same start: only the anchor differs, and it keeps the weights nearer.
    assert 0 < _drift(held, start) < 0.5 * _drift(free, start)
    log = [json.loads(line) for line in (tmp_path / "held" / "log.jsonl").read_text().splitlines()]
    # Step 1 starts on the anchor (no pull yet); later steps log weight * drift before their update.
    assert log[0]["anchor_loss"] == 0.0 and all(r["anchor_loss"] > 0 for r in log[1:])
    assert "anchor_loss" not in json.loads((tmp_path / "free" / "log.jsonl").read_text().splitlines()[-1])

    # Interrupted and resumed, the pull is still towards the starting plug-in, not the checkpoint.
    cut = config(tmp_path / "cut", steps=12, checkpoint_every=4, init_plugin=saved, anchor_weight=5.0)
    trainer(cut, lm, examples).run(progress=False, until=6)
    resumed = trainer(cut, lm, examples)
    resumed.run(progress=False)
    for (name, a), (_, b) in zip(held.plugin.state_dict().items(), resumed.plugin.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_anchor_plugin_pulls_towards_another_plugin_than_the_start(tmp_path, lm, examples):
    """A run continued from an anchored run's plug-in (optimizer state gone) keeps that run's
    anchor: with ``anchor_plugin`` the pull is towards it, not towards where this run starts."""
    first = trainer(config(tmp_path / "a", steps=4, checkpoint_every=4), lm, examples)
    first.run(progress=False)
    anchor_dir = str(first.checkpoints()[-1] / "plugin")
    anchor = {name: p.detach().clone() for name, p in first.plugin.state_dict().items()}
    moved = trainer(config(tmp_path / "b", steps=12, checkpoint_every=12, init_plugin=anchor_dir), lm, examples)
    moved.run(progress=False)
    start_dir = str(moved.checkpoints()[-1] / "plugin")
    gap = _drift(moved, anchor)

    kwargs = {"steps": 8, "init_plugin": start_dir, "anchor_weight": 50.0}
    pulled = trainer(config(tmp_path / "pulled", anchor_plugin=anchor_dir, **kwargs), lm, examples)
    pulled.run(progress=False)
    held = trainer(config(tmp_path / "held", **kwargs), lm, examples)
    held.run(progress=False)
    # Pulled back towards the anchor plug-in; the same run anchored at its start stays away from it.
    assert _drift(pulled, anchor) < 0.8 * gap < _drift(held, anchor)
    first_step = json.loads((tmp_path / "pulled" / "log.jsonl").read_text().splitlines()[0])
    assert first_step["anchor_loss"] == pytest.approx(50.0 * gap, rel=1e-3)
    assert f"towards {anchor_dir}" in pulled.training_note()
    with pytest.raises(ValueError, match=r"anchor plug-in .*\(low rank 4\) cannot serve"):
        trainer(config(tmp_path / "narrow", low_rank=2, anchor_plugin=anchor_dir, anchor_weight=1.0), lm, examples)


def test_a_narrower_anchor_pulls_the_directions_it_lacks_towards_adding_nothing(tmp_path, lm, examples):
    """A rank-8 start (trained, from another seed) anchored to a rank-4 plug-in: the anchor holds
    the rank-4 deltas in the first directions, zero B columns and the start's own A rows in the
    others, so the pull does not drag trained A rows towards some other random matrix."""
    first = trainer(config(tmp_path / "narrow", steps=4, checkpoint_every=4), lm, examples)
    first.run(progress=False)
    narrow = dict(first.plugin.named_parameters())
    start = BeaconPlugin.from_model(lm, low_rank=8, seed=99)
    with torch.no_grad():
        for name, p in start.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.01, generator=torch.Generator().manual_seed(7))
    start_dir = str(start.save(tmp_path / "start"))
    t = trainer(config(tmp_path / "run", low_rank=8, seed=5, init_plugin=start_dir, anchor_weight=1.0,
                       anchor_plugin=str(first.checkpoints()[-1] / "plugin")), lm, examples)
    anchor = dict(zip((name for name, _ in t.plugin.named_parameters()), t.anchor, strict=True))
    started = dict(start.named_parameters())
    checked = 0
    for name, value in anchor.items():
        if name.endswith("lora_A"):
            assert torch.equal(value[:4], narrow[name]) and torch.equal(value[4:], started[name][4:]), name
            checked += 1
        elif name.endswith("lora_B"):
            assert torch.equal(value[:, :4], narrow[name]) and not value[:, 4:].any(), name
    assert checked > 0


def test_gradient_checkpointing_gives_the_same_gradients(lm, examples):
    """Recomputing windows in backward must not change a single gradient: each window is a pure
    function of its inputs, with the beacon hooks entered again during the recomputation (a
    recomputation without them would silently use the base projections for beacon rows)."""
    from beacon_rag.beacon.train import example_losses

    plugin = BeaconPlugin.from_model(lm, low_rank=4, seed=0)
    with torch.no_grad():  # away from the init, where B = 0 hides half the gradient paths
        for name, p in plugin.named_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    plugin.requires_grad_(True)
    example = examples[1]
    assert len(example.context_ids) > 3 * 16  # several windows, so memory flows between them

    def grads(checkpoint: bool) -> tuple[float, dict[str, torch.Tensor]]:
        plugin.zero_grad(set_to_none=True)
        losses = example_losses(lm, plugin, example, window=16, ratio=4, distill_weight=0.5, raw_weight=1.0,
                                checkpoint=checkpoint)
        losses["loss"].backward()
        return losses["loss"].item(), {n: p.grad.clone() for n, p in plugin.named_parameters() if p.grad is not None}

    loss_plain, plain = grads(False)
    loss_ckpt, ckpt = grads(True)
    assert loss_plain == pytest.approx(loss_ckpt, rel=1e-6)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], rtol=1e-4, atol=1e-7), name
    assert any(g.abs().sum() > 0 for n, g in plain.items() if "lora_A" in n)
    # The trainer accepts the flag (it used to refuse it) and trains with it.
    TrainConfig(gradient_checkpointing=True).check()


def _perturbed_plugin(lm, seed: int = 0) -> BeaconPlugin:
    """A low-rank plug-in whose beacon projections differ from the base (B != 0), as after training."""
    plugin = BeaconPlugin.from_model(lm, low_rank=4, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in plugin.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return plugin


def test_batched_window_loop_equals_one_row_at_a_time(lm, examples):
    from beacon_rag.beacon.compress import compress_rows

    plugin = _perturbed_plugin(lm)
    rows = [examples[0].context_ids, examples[1].context_ids]
    assert len(rows[0]) == len(rows[1]) and rows[0] != rows[1]
    keys, values, _, beacons = compress_rows(lm, plugin, torch.tensor(rows), ([], []), 0, window=16, ratio=4,
                                             sink=1)
    for row, ids in enumerate(rows):
        single = compress_segment(lm, plugin, ids, KVContext(lm), window=16, ratio=4, sink=1)
        assert keys[:, row].shape == single.keys.shape
        torch.testing.assert_close(keys[:, row], single.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(values[:, row], single.values, atol=1e-5, rtol=1e-4)
        assert single.info["beacons"] == beacons


def test_batch_losses_equal_the_mean_of_single_examples_and_their_gradients(lm, examples):
    from beacon_rag.beacon.train import batch_losses, example_losses

    plugin = _perturbed_plugin(lm, seed=1).requires_grad_(True)
    lm_text = make_task_examples(lm, "lm", "train", 1, 56, seed=3)  # same length, no prompt, longer continuation
    other_length = make_task_examples(lm, "fact", "train", 2, 56, seed=3)[1]  # a second group
    batch = [examples[0], lm_text[0], examples[1], other_length]
    assert len({len(e.context_ids) for e in batch}) == 2
    assert len({len(e.continuation_ids) for e in batch if len(e.context_ids) == 56}) == 2  # padding is exercised
    options = {"window": 16, "ratio": 4, "distill_weight": 0.5, "raw_weight": 1.0, "answer_weight": 0.7}

    def gradients(loss):
        plugin.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in plugin.parameters()]

    batched = batch_losses(lm, plugin, batch, **options)
    batched_grads = gradients(batched["loss"])
    singles = [example_losses(lm, plugin, e, **options) for e in batch]
    single_grads = gradients(sum(s["loss"] for s in singles) / len(batch))
    for key in ("lm", "distill", "raw", "loss"):
        expected = sum(s[key].item() for s in singles) / len(batch)
        assert batched[key].item() == pytest.approx(expected, rel=1e-5), key
    answered = [s["answer"].item() for s in singles if "answer" in s]
    assert len(answered) == 3 and "answer" not in singles[1]  # the lm text has no answer
    assert batched["answer"].item() == pytest.approx(sum(answered) / 3, rel=1e-5)
    for a, b in zip(batched_grads, single_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_answer_spans_cover_exactly_the_answer(embedded):
    """The answer loss must score the digits (or the place, the colour), not the template around them."""
    for task in ("passkey", "kv", "fact", "multidoc", "codes", "multiturn"):
        for e in make_task_examples(embedded, task, "train", 4, 200, seed=5):
            assert e.answer_span is not None, (task, e.answer)
            start, end = e.answer_span
            assert embedded.tokenizer.decode(e.target_ids[start:end]).strip() == e.answer, task
            assert end < len(e.target_ids)  # the end-of-turn token (and the full stop) are outside
    assert make_task_examples(embedded, "lm", "train", 1, 200, seed=5)[0].answer_span is None


def test_answer_exact_is_what_greedy_decoding_prints(embedded):
    """Teacher-forced exact match of the answer's tokens equals greedy decoding's answer after the
    same prompt: checked with the full context (the embedded model reads short pass keys) and with
    none (it cannot guess them), so both outcomes occur."""
    from beacon_rag.beacon.train import reference_losses

    seen = set()
    for e in make_task_examples(embedded, "passkey", "heldout", 3, 160, seed=9):
        refs = reference_losses(embedded, e)
        start, end = e.answer_span
        answer = e.continuation_ids[e.loss_start + start : e.loss_start + end]
        head = e.continuation_ids[: e.loss_start + start]
        for condition, prefix in (("full", e.context_ids + head), ("none", head)):
            out = embedded.model.generate(torch.tensor([prefix]), max_new_tokens=len(answer), do_sample=False)
            greedy = out[0, len(prefix):].tolist() == answer
            assert refs[f"answer_exact_{condition}"] == float(greedy), (condition, e.answer)
            assert refs[f"answer_exact_{condition}"] <= refs[f"answer_token_accuracy_{condition}"] <= 1.0
            seen.add(greedy)
    assert seen == {True, False}


def test_recall_quotes_the_context_after_its_cue(embedded):
    """The recall target is the very tokens of the context that follow the cue the prompt quotes;
    about half of the quotes open on a hidden reference number's digits."""
    examples = make_task_examples(embedded, "recall", "train", 12, 400, seed=6, target_tokens=24)
    on_digits = 0
    for e in examples:
        start = e.meta["start"]
        assert len(e.context_ids) == 400 and e.target_ids == e.context_ids[start : start + 24]
        assert e.answer_span == (0, 24) and e.answer == embedded.tokenizer.decode(e.target_ids)
        prompt = embedded.tokenizer.decode(e.prompt_ids)
        assert embedded.tokenizer.decode(e.context_ids[start - 8 : start]) in prompt
        on_digits += e.answer.lstrip()[:1].isdigit() and "(ref." in embedded.tokenizer.decode(e.context_ids[start - 3 : start])
    assert 2 <= on_digits <= 10
    assert make_task_examples(embedded, "recall", "heldout", 2, 400, seed=6)[0].context_ids != examples[0].context_ids


def test_answer_weight_adds_the_answer_tokens_loss(lm, examples):
    from beacon_rag.beacon.train import example_losses

    plugin = _perturbed_plugin(lm, seed=2)
    plain = example_losses(lm, plugin, examples[0], window=16, ratio=4, grad=False)
    weighted = example_losses(lm, plugin, examples[0], window=16, ratio=4, answer_weight=2.0, grad=False)
    assert plain["loss"].item() == pytest.approx(plain["lm"].item())
    assert plain["answer"].item() != pytest.approx(plain["lm"].item())  # fewer tokens than the target
    assert weighted["loss"].item() == pytest.approx(plain["lm"].item() + 2.0 * plain["answer"].item(), rel=1e-6)


def test_training_batches_share_one_exact_context_length(lm):
    from beacon_rag.beacon.data import Mixture

    data = TrainingData(lm, "train", 5, Mixture(context_tokens=(300, 400), target_tokens=8))
    batch = data.batch(3, 8)
    assert len(batch) == 8 and len({len(e.context_ids) for e in batch}) == 1
    assert 300 <= len(batch[0].context_ids) <= 400
    assert [e.context_ids for e in data.batch(3, 8)] == [e.context_ids for e in batch]  # a function of the index
    assert batch[0].context_ids != data.batch(4, 8)[0].context_ids
    # Every task builds exactly the length asked for (multi-document and multi-turn included).
    for task in ("passkey", "kv", "fact", "multidoc", "codes", "multiturn", "lm", "recall"):
        assert {len(e.context_ids) for e in make_task_examples(lm, task, "train", 3, 300, seed=4)} == {300}, task


def test_trainer_with_batches(tmp_path, lm):
    from beacon_rag.beacon.data import Mixture

    cfg = config(tmp_path, steps=2, batch_size=3, context_tokens=(300, 300), eval_every=0, raw_loss_weight=1.0)
    t = Trainer(cfg, lm=lm, data=TrainingData(lm, "train", 0, Mixture(context_tokens=(300, 300), target_tokens=8)))
    before = {name: p.detach().clone() for name, p in t.plugin.state_dict().items()}
    t.run(progress=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    batch = t.data.batch(0, 3)
    assert records[0]["step_tokens"] == sum(e.tokens for e in batch)
    assert all(record["loss"] == record["loss"] and record["loss"] > 0 for record in records)  # finite, not NaN
    assert any(not torch.equal(before[name], p) for name, p in t.plugin.state_dict().items())


def test_step_log_has_no_answer_loss_without_an_answer(tmp_path, lm, examples):
    """A step of plain-text examples has no answer tokens: its log says None, not a perfect 0.0."""
    plain = make_task_examples(lm, "lm", "train", 2, 56, seed=3, target_tokens=8)
    for name, data in (("plain", plain), ("qa", examples)):
        t = trainer(config(tmp_path / name, steps=2), lm, data)
        t.run(progress=False)
        records = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        steps = [r for r in records if "answer_loss" in r]
        assert len(steps) == 2
        if name == "plain":
            assert all(r["answer_loss"] is None for r in steps)
        else:
            assert all(r["answer_loss"] > 0 for r in steps)


def test_train_speed_bench_measures_every_batch_size(embedded):
    from beacon_rag.bench import train_speed

    args = parse_cli(train_speed.add_arguments, "--narrow", "--batch-sizes", "1,2", "--context-tokens", "64",
                     "--window", "16", "--steps", "1", "--warmup", "0", "--threads", "1", "--no-save")
    result = train_speed.run(args)
    assert [row["batch_size"] for row in result["rows"]] == [1, 2]
    assert result["rows"][0]["speedup_vs_first"] == 1.0
    assert all(row["tokens_per_s"] > 0 and row["seconds_per_step"] > 0 for row in result["rows"])
    assert result["model"].endswith("-narrow") and result["setting"]["context_tokens"] == 64
    with pytest.raises(SystemExit):
        parse_cli(train_speed.add_arguments, "--batch-sizes", "0,2")


def test_eval_only_prints_the_starting_plugins_eval_and_trains_nothing(tmp_path, lm, capsys):
    """``beacon-rag train --eval-only``: a saved plug-in's held-out figures, no training step."""
    from beacon_rag.beacon.train import add_arguments, run

    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    plugin = _perturbed_plugin(lm, seed=4)
    plugin.save(tmp_path / "plugin")
    common = ["--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"), "--window", "16",
              "--ratios", "2,4", "--low-rank", "4", "--eval-examples", "1", "--eval-context-tokens", "48",
              "--target-tokens", "8", "--eval-only", "--no-progress"]
    assert run(parse_cli(add_arguments, *common, "--init-plugin", str(tmp_path / "plugin"))) == 0
    trained = json.loads(capsys.readouterr().out)
    assert run(parse_cli(add_arguments, *common)) == 0
    untrained = json.loads(capsys.readouterr().out)
    assert trained["eval_ratio"] == 4 and set(trained["eval_by_task"]) == {"lm", "passkey", "multidoc", "codes", "multiturn", "recall"}
    assert trained["eval_full"] == untrained["eval_full"] and trained["eval_compressed"] != untrained["eval_compressed"]
    assert "passkey" in trained["eval_answer_gap_recovered_by_task"]
    assert not list((tmp_path / "out").glob("step-*")) and not (tmp_path / "out" / "log.jsonl").exists()
    # A subset of the tasks scores the same examples as the full eval does, and only those.
    assert run(parse_cli(add_arguments, *common, "--init-plugin", str(tmp_path / "plugin"), "--eval-tasks", "codes,passkey")) == 0
    subset = json.loads(capsys.readouterr().out)
    assert set(subset["eval_by_task"]) == {"codes", "passkey"}
    for task in ("codes", "passkey"):
        assert subset["eval_by_task"][task] == pytest.approx(trained["eval_by_task"][task], rel=1e-6)
        assert subset["eval_answer_exact_by_task"][task] == trained["eval_answer_exact_by_task"][task]
    with pytest.raises(ValueError, match="eval_tasks.*got passkey, codez"):
        run(parse_cli(add_arguments, *common, "--eval-tasks", "passkey,codez"))
    assert trained["eval_examples_by_task"] == dict.fromkeys(trained["eval_by_task"], 1)

    # The table a session's note carries, from these evals' own JSON.
    from beacon_rag.bench.eval_table import main as eval_table

    (tmp_path / "trained.json").write_text(json.dumps(trained))
    (tmp_path / "subset.json").write_text(json.dumps(subset))
    assert eval_table(["--references", f"trained={tmp_path / 'trained.json'}", f"subset={tmp_path / 'subset.json'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| plug-in | ratio | lm gap | passkey | multidoc | codes | multiturn | recall |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| trained", "| subset", "| full context", "| no context"]
    exact = trained["eval_answer_exact_by_task"]["passkey"]
    assert lines[2].split(" | ")[3] == (f"{trained['eval_answer_by_task']['passkey']:.2f} / "
                                        f"{trained['eval_answer_token_accuracy_by_task']['passkey']:.2f} / {round(exact)} of 1")
    assert lines[3].split(" | ")[4] == ""  # the subset did not score multidoc
    # Another seed holds other held-out examples: side by side, its figures would not compare.
    assert run(parse_cli(add_arguments, *common, "--seed", "1", "--eval-tasks", "passkey")) == 0
    (tmp_path / "other.json").write_text(capsys.readouterr().out)
    assert eval_table([f"trained={tmp_path / 'trained.json'}", f"other={tmp_path / 'other.json'}"]) == 1
    assert "trained and other scored different held-out passkey examples" in capsys.readouterr().err
    # Evals committed before accuracies (and counts) were recorded still tabulate: their loss alone.
    older = {k: v for k, v in trained.items() if "accuracy" not in k and "exact" not in k and "examples" not in k}
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert eval_table([f"older={tmp_path / 'older.json'}"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split(" | ")[3] == f"{trained['eval_answer_by_task']['passkey']:.2f} / - / -"
    # Evals with accuracies but from before the counts: alone they give the share; beside an eval
    # of the same examples that recorded its counts, they read "k of n" too.
    uncounted = {k: v for k, v in trained.items() if k != "eval_examples_by_task"}
    (tmp_path / "uncounted.json").write_text(json.dumps(uncounted))
    assert eval_table([f"uncounted={tmp_path / 'uncounted.json'}"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split(" | ")[3].endswith(f" / {exact:.2f}")
    assert eval_table([f"uncounted={tmp_path / 'uncounted.json'}", f"subset={tmp_path / 'subset.json'}"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split(" | ")[3] == lines[2].split(" | ")[3]
    # One plug-in's eval split across cores by --eval-tasks is one row, the row of its whole eval.
    def part(tasks):
        return {k: ({t: x for t, x in v.items() if t in tasks} if k.endswith("_by_task") else v)
                for k, v in trained.items()}
    first_half, second_half = list(trained["eval_by_task"])[:3], list(trained["eval_by_task"])[3:]
    for name, tasks in (("first", first_half), ("second", second_half)):
        (tmp_path / f"{name}.json").write_text(json.dumps(part(tasks)))
    assert eval_table([f"trained={tmp_path / 'first.json'}", f"trained={tmp_path / 'second.json'}"]) == 0
    assert capsys.readouterr().out.splitlines()[2] == lines[2]
    assert eval_table([f"trained={tmp_path / 'first.json'}", f"trained={tmp_path / 'trained.json'}"]) == 1
    assert f"trained at ratio {trained['eval_ratio']} has two evals of" in capsys.readouterr().err
    assert eval_table([str(tmp_path / "trained.json")]) == 1  # no LABEL=
    assert "usage:" in capsys.readouterr().err


def test_verbatim_digits_in_training_batches_and_in_the_exported_plugin(tmp_path, lm, examples, caplog):
    """``keep``: rows of a forward share kept positions, so a batch splits by them; the plug-in records it."""
    from beacon_rag.beacon.compress import verbatim_mask
    from beacon_rag.beacon.train import batch_losses, example_losses

    plugin = _perturbed_plugin(lm, seed=2).requires_grad_(True)
    batch = examples[:3]  # pass keys of one length, digits at different places
    assert len({len(e.context_ids) for e in batch}) == 1
    assert len({tuple(verbatim_mask(lm, e.context_ids, "digits")) for e in batch}) == 3
    options = {"window": 16, "ratio": 4, "raw_weight": 1.0, "answer_weight": 0.5}
    batched = batch_losses(lm, plugin, batch, keep="digits", **options)
    singles = [example_losses(lm, plugin, e, keep="digits", **options) for e in batch]
    assert batched["loss"].item() == pytest.approx(sum(s["loss"].item() for s in singles) / 3, rel=1e-5)
    plain = batch_losses(lm, plugin, batch, **options)
    assert plain["lm"].item() != pytest.approx(batched["lm"].item(), rel=1e-4)  # the kept digits are read

    kept = trainer(config(tmp_path / "kept", steps=2, checkpoint_every=2, keep="digits"), lm, examples)
    kept.run(progress=False)
    folder = kept.checkpoints()[-1] / "plugin"
    assert json.loads((folder / "beacon_config.json").read_text())["keep"] == "digits"
    with caplog.at_level(logging.WARNING, logger="beacon_rag.beacon.train"):
        again = trainer(config(tmp_path / "plain", steps=2, checkpoint_every=2, init_plugin=str(folder)), lm, examples)
    assert "was trained with keep=digits; this run uses keep=None" in caplog.text
    again.run(progress=False)
    assert "keep" not in json.loads((again.checkpoints()[-1] / "plugin" / "beacon_config.json").read_text())


def test_segment_starts_mark_each_document_and_turn_as_the_engine_caches_them(embedded):
    """``Example.segment_starts`` cut a QA context where the engine cuts the same prompt: the chat
    header, then "Documents:", then each document with the blank line that ends it; a chat history
    at every message. Plain text is one segment."""
    decode = embedded.tokenizer.decode

    def pieces(example):
        bounds = (0, *example.segment_starts, len(example.context_ids))
        assert list(bounds) == sorted(set(bounds)), example.segment_starts
        return [decode(example.context_ids[a:b]) for a, b in itertools.pairwise(bounds)]

    for example in make_task_examples(embedded, "codes", "train", 3, 300, seed=2):
        header, documents_head, *documents = pieces(example)
        assert header.endswith("<|im_start|>user\n") and documents_head == "Documents:\n\n"
        assert len(documents) >= 3 and all(d.count("The access code for") == 1 for d in documents)
        assert all(d.endswith("\n\n") for d in documents[:-1])
    for example in make_task_examples(embedded, "multidoc", "train", 2, 300, seed=2):
        header, *documents = pieces(example)
        assert header.endswith("<|im_start|>user\n") and len(documents) >= 3
        assert all(d.lstrip("\n").startswith(f"Document {i + 1}:\n") for i, d in enumerate(documents))
    for example in make_task_examples(embedded, "multiturn", "train", 3, 300, seed=2):
        turns = pieces(example)
        assert len(turns) % 2 == 0 and len(turns) >= 4
        assert all("Please summarise this passage:" in t for t in turns[0::2])
        assert all(t.endswith("<|im_start|>assistant\n") for t in turns[0::2])
        assert all(t.endswith("<|im_start|>user\n") for t in turns[1:-1:2])
    assert len(make_task_examples(embedded, "passkey", "train", 1, 200, seed=2)[0].segment_starts) == 1
    assert make_task_examples(embedded, "lm", "train", 1, 200, seed=2)[0].segment_starts == ()


def test_segments_train_in_the_engines_layout(lm):
    """``segments=True`` scores each example as its segments chained (windows restart at each start);
    without it the same example is one segment, and the losses differ."""
    from beacon_rag.beacon.train import batch_losses

    plugin = _perturbed_plugin(lm, seed=1)
    batch = make_task_examples(lm, "codes", "train", 2, 96, seed=4)
    assert all(len(e.segment_starts) >= 4 for e in batch)
    options = {"window": 16, "ratio": 4, "raw_weight": 1.0, "grad": False}
    with_segments = batch_losses(lm, plugin, batch, segments=True, **options)
    singles = [batch_losses(lm, plugin, [e], segments=True, **options) for e in batch]
    assert with_segments["loss"].item() == pytest.approx(sum(s["loss"].item() for s in singles) / 2, rel=1e-5)
    plain = batch_losses(lm, plugin, batch, **options)
    assert abs(plain["raw"].item() - with_segments["raw"].item()) > 1e-4
