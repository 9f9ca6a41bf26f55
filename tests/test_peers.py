"""``bench peers``: the peers worker (kvpress, LLMLingua in .venv-peers) on the embedded model.

The end-to-end test runs the real bench on a tiny setting: the same token ids go to the worker,
whose uncompressed replay must give the engine's own answers (two transformers versions, one
model), a kvpress press must keep 1/R of the context, and LLMLingua must shorten the text.
Needs ``.venv-peers`` (``bash scripts/setup_peers.sh``); skipped with that reason without it.
"""

from __future__ import annotations

import argparse

import pytest

from beacon_rag.bench import peers, peers_worker
from beacon_rag.engine import rag_messages
from beacon_rag.segments import Message
from tests.helpers.cli import parse_cli

PEERS_PYTHON = peers.default_peers_python()
needs_peers = pytest.mark.skipif(
    not PEERS_PYTHON.is_file(),
    reason=f"{PEERS_PYTHON} absent: create the peers environment with `bash scripts/setup_peers.sh`",
)


def _args(**overrides) -> argparse.Namespace:
    args = parse_cli(peers.add_arguments)
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_bad_input_is_refused_before_any_work():
    with pytest.raises(ValueError, match="ratios must be integers >= 2"):
        peers.run(_args(ratios=[1], no_peers=True))
    with pytest.raises(ValueError, match="unknown press 'h2o'"):
        peers.run(_args(presses=["h2o"], no_peers=True))
    with pytest.raises(ValueError, match="unknown press 'h2o'"):
        peers_worker.make_press({"name": "h2o", "ratio": 2})
    with pytest.raises(ValueError, match="ratio must be >= 1"):
        peers_worker.make_press({"name": "knorm", "ratio": 0.5})
    with pytest.raises(FileNotFoundError, match="setup_peers.sh"):
        peers.run(_args(peers_python="/nonexistent/python"))


def test_text_compression_touches_only_cacheable_texts():
    messages = rag_messages("What is the code?", ["first document", "second document"])
    # document blocks carry the blank line that separates them; a compressed one keeps it
    assert peers.cacheable_texts(messages) == ["first document\n\n", "second document\n\n"]
    swapped = peers.replace_texts(messages, {"first document\n\n": "first", "second document\n\n": "second "})
    assert [b.text for b in swapped[-1].content if b.document] == ["first\n\n", "second\n\n"]
    assert swapped[-1].content[-1].text == "Question: What is the code?"  # the question stays as is
    chat = [Message("system", "s"), Message("user", "fact"), Message("assistant", "noted"), Message("user", "q?")]
    assert peers.cacheable_texts(chat) == ["fact", "noted"]
    assert [m.content for m in peers.replace_texts(chat, {"fact": "f", "noted": "n"})] == ["s", "f", "n", "q?"]


@needs_peers
def test_peers_run_end_to_end_on_the_embedded_model(embedded, tmp_path):
    out = tmp_path / "peers.json"
    args = _args(tasks=["passkey", "lm-loss"], ratios=[2], presses=["knorm"], examples=1,
                 context_tokens={"passkey": 160, "lm-loss": 96}, max_tokens=24, repair_tokens=0,
                 placement_ratio=0, out=str(out), details=True)
    result = peers.run(args, lm=embedded)

    # both environments run the same model on the same ids: the uncompressed replay must agree
    assert result["worker_full_agreement"] == {"passkey": 1.0, "lm-loss": 1.0}
    assert result["peers"]["kvpress"]["versions"]["kvpress"] == "0.5.5"
    passkey = result["tasks"]["passkey"]["methods"]
    assert passkey["full"]["accuracy"] == 1.0, passkey["full"]  # the prompt really carries the key
    knorm = passkey["kvpress-knorm-x2"]
    assert 0.45 <= knorm["kept_slots_per_token"] <= 0.55, knorm  # compression_ratio 1 - 1/2
    assert knorm["outputs"][0].strip()
    lingua = passkey["llmlingua-x2"]
    assert 0 < lingua["kept_slots_per_token"] <= 1.0, lingua
    # LLMLingua shortened the texts (measured in the model's tokens over every text it was given;
    # it leaves some short texts nearly whole, so no per-text bound)
    assert result["peers"]["llmlingua"]["kept_share"]["2.0"]["final"] < 0.9, result["peers"]["llmlingua"]
    loss = result["tasks"]["lm-loss"]["methods"]
    for name in ("full", "none", "beacon-x2", "kvpress-knorm-x2", "llmlingua-x2"):
        assert 0 < loss[name]["loss"] < 20, (name, loss[name])
    assert loss["full"]["loss"] < loss["none"]["loss"]  # 96 tokens of context help the next 64

    assert out.is_file() and out.with_suffix(".png").stat().st_size > 10_000
    table = peers.render_markdown(result)
    assert table.splitlines()[0].startswith("| method | kept / token | passkey (n=1")
    assert any(line.startswith("| kvpress-knorm-x2 |") for line in table.splitlines())


def test_beacon_rows_match_the_budget_when_the_plugin_keeps_tokens(embedded):
    """The shipped plug-in keeps numbers verbatim, which puts its row above 1/R kept slots per
    token; the beacons-only row beside it is the one whose budget matches the peers'. Runs
    without the peers environment (beacon-rag's own rows only)."""
    args = _args(tasks=["passkey", "lm-loss"], ratios=[4], examples=1, no_peers=True,
                 context_tokens={"passkey": 200, "lm-loss": 96}, max_tokens=16, repair_tokens=0,
                 placement_ratio=0, out=None)
    result = peers.run(args, lm=embedded)
    beacon = result["settings"]["beacon"]
    assert beacon["keep"] == "numbers" and beacon["plugin"] != "untrained-v1", beacon
    for task in ("passkey", "lm-loss"):
        rows = result["tasks"][task]["methods"]
        shipped, alone = rows["beacon-x4"], rows["beacon+none-x4"]
        assert alone["kept_slots_per_token"] <= 0.3, alone
        if task == "passkey":  # the pass key's ten digits are kept on top of the beacons
            assert shipped["kept_slots_per_token"] > alone["kept_slots_per_token"], (shipped, alone)
    footer = peers.render_markdown(result).splitlines()[-1]
    assert f"beacon plug-in {beacon['plugin'][:12]}, keeps numbers verbatim" in footer, footer


@pytest.mark.parametrize("beacon, expected", [
    (None, None),  # results written before the plug-in was recorded say nothing of it
    ({"plugin": "untrained-v1", "untrained": True}, "; untrained beacon plug-in;"),
    ({"plugin": "393d4d6644ced79c", "keep": "numbers"}, "; beacon plug-in 393d4d6644ce, keeps numbers verbatim"),
])
def test_table_footer_names_the_beacon_plugin_it_ran(beacon, expected):
    row = {"family": "beacon-rag beacon", "placement": "chained", "ratio": 4.0, "accuracy": 0.5,
           "kept_slots_per_token": 0.25}
    result = {"model": "m", "machine": "cpu", "settings": {"max_new_tokens": 8},
              "tasks": {"passkey": {"n": 1, "mean_prompt_tokens": 10, "methods": {"beacon-x4": row}}}}
    if beacon is not None:
        result["settings"]["beacon"] = beacon
    footer = peers.render_markdown(result).splitlines()[-1]
    if expected is None:
        assert "plug-in" not in footer, footer
    else:
        assert expected in footer, footer
