"""``beacon``: Activation Beacon compression (every ``ratio`` tokens folded into one slot per layer).

The compressor is a thin configuration holder over ``beacon_rag.beacon.compress_segment``; what it
adds is the identity that goes into cache keys (``spec``) and the choice of plug-in weights:
a trained plug-in (a ``BeaconPlugin`` or a folder saved by ``BeaconPlugin.save``), or, when none is
given, the untrained plug-in (copies of the base projections), built once per model.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import torch

from beacon_rag.beacon.compress import (
    ALLOWED_RATIOS,
    KEEP_KINDS,
    choose_ratio,
    compress_segment,
    validate,
    verbatim_mask,
)
from beacon_rag.beacon.plugin import BeaconPlugin
from beacon_rag.compressors.base import prefill_pre_rope
from beacon_rag.kv import CompressedKV, KVContext
from beacon_rag.models import LoadedModel

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 1024  # the Llama-3 release's window; Qwen-2 and Mistral used 2048
DEFAULT_RESERVE = 512  # positions left free by ratio="adapt" for the question and the answer
UNTRAINED_ID = "untrained-v1"  # bump if the untrained initialisation ever changes
# Spellings of ``keep`` on command lines: a kind, or "none" to override what a plug-in records.
KEEP_CHOICES = (*KEEP_KINDS, "none")

# Untrained plug-ins, one per loaded model: building one copies every q/k/v projection, which
# should happen once per model, not once per compressor instance or per request.
_UNTRAINED: weakref.WeakKeyDictionary[Any, BeaconPlugin] = weakref.WeakKeyDictionary()
_UNTRAINED_LOCK = threading.Lock()


def shipped_plugins_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "plugins"


def shipped_plugin(lm: LoadedModel) -> tuple[Path, dict[str, Any]] | None:
    """The plug-in shipped in the package for ``lm``, if any: (folder, its config).

    Matched on the base model's weights fingerprint: a plug-in's weights are deltas over the
    exact base weights it was trained with, so a same-named but different model must not get it.
    """
    root = shipped_plugins_dir()
    if not root.is_dir():
        return None
    for config_path in sorted(root.glob("*/beacon_config.json")):
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as err:
            logger.warning("ignoring unreadable shipped plug-in config %s: %s", config_path, err)
            continue
        if isinstance(config, dict) and config.get("base_fingerprint") == lm.fingerprint:
            return config_path.parent, config
    return None


def _recorded_window(config: dict[str, Any]) -> int | None:
    """The window a plug-in was trained with, if its config records one.

    Beacons trained to summarise windows of W tokens are out of distribution in windows of
    another size, so a plug-in given without a window must run with its own.
    """
    window = config.get("window")
    return window if isinstance(window, int) and not isinstance(window, bool) else None


def _recorded_keep(config: dict[str, Any]) -> str | None:
    keep = config.get("keep")
    return keep if keep in KEEP_KINDS else None


def _plugin_config(plugin: BeaconPlugin | str | os.PathLike[str]) -> dict[str, Any]:
    if isinstance(plugin, BeaconPlugin):
        return plugin.config
    try:
        config = json.loads((Path(plugin) / "beacon_config.json").read_text())
    except (OSError, ValueError):
        return {}  # loading the plug-in later reports what is wrong with it
    return config if isinstance(config, dict) else {}


def default_options(lm: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
    """Fill in the shipped plug-in (and the window and verbatim tokens it was trained with) unless given.

    This is what makes ``--compressor beacon`` on the embedded model use trained weights. A
    plug-in given without a window or ``keep`` gets those it was trained with, like the shipped
    one: beacons trained beside raw digits expect them there. ``keep=None`` given explicitly
    turns verbatim tokens off.
    """
    if "plugin" in options:
        if options["plugin"] is None:
            return options
        config = _plugin_config(options["plugin"])
    else:
        found = shipped_plugin(lm)
        if found is None:
            return options
        folder, config = found  # its config is already read: no second read
        logger.info("using the shipped beacon plug-in %s for %s", folder.name, lm.name)
        options = {"plugin": folder, **options}
    trained = {"window": _recorded_window(config), "keep": _recorded_keep(config)}
    return {**{key: value for key, value in trained.items() if value is not None and key not in options}, **options}


def untrained_plugin(lm: LoadedModel) -> BeaconPlugin:
    """The untrained plug-in of ``lm``, built on first use and shared."""
    with _UNTRAINED_LOCK:
        plugin = _UNTRAINED.get(lm.model)
        if plugin is None:
            logger.warning(
                "no beacon weights given: using the UNTRAINED plug-in for %s (beacon projections are "
                "copies of the base ones); compression quality will be poor", lm.name,
            )
            plugin = BeaconPlugin.from_model(lm)
            _UNTRAINED[lm.model] = plugin
        return plugin


class BeaconCompressor:
    """Activation Beacon with a fixed window, a ratio (or ``"adapt"``) and an optional sink.

    ``plugin`` is ``None`` (untrained plug-in), a ``BeaconPlugin``, or a path to a saved plug-in
    (loaded lazily, on first ``compress`` or ``spec``, and checked against the model then).
    ``keep`` (one of ``KEEP_KINDS``) also keeps those tokens raw among the beacons: exact numbers,
    at one slot per kept token (see ``beacon_rag.beacon.compress``).

    ``tail`` keeps a segment's newest ``tail`` tokens raw, after the beacons of the older ones: the
    paper's live window, which stays raw while the windows before it are compressed. Why: text
    that goes on from where a segment ends (a document being continued, a turn cut mid-sentence)
    leans on its last few words, which beacons blur; trained beacons read back facts, not the exact
    last words. The tail's K/V come from a plain forward over ``[context | the older tokens'
    beacons]``, which is what the paper's raw-token loss trains the beacons for. It costs ``tail``
    slots: at the budget of ratio ``R``, a ratio of ``2R`` for the older tokens leaves room for a
    tail of up to ``n / (2R - 1)`` tokens of an ``n``-token segment.
    """

    name = "beacon"

    def __init__(
        self,
        ratio: int | str = 8,
        window: int = DEFAULT_WINDOW,
        sink: int = 0,
        plugin: BeaconPlugin | str | os.PathLike[str] | None = None,
        reserve: int = DEFAULT_RESERVE,
        keep: str | None = None,
        tail: int = 0,
    ) -> None:
        if keep is not None and keep not in KEEP_KINDS:
            raise ValueError(f"keep must be one of {', '.join(KEEP_KINDS)} or None, got {keep!r}")
        if isinstance(ratio, str):
            if ratio != "adapt":
                raise ValueError(
                    f"ratio must be one of {', '.join(map(str, ALLOWED_RATIOS))}, 0 (keep raw) or 'adapt', "
                    f"got {ratio!r}"
                )
            validate(window, 0, sink)
            if not any(window % r == 0 for r in ALLOWED_RATIOS):
                raise ValueError(f"ratio 'adapt' needs a window divisible by one of {ALLOWED_RATIOS}")
        else:
            validate(window, ratio, sink)
        if reserve < 0:
            raise ValueError(f"reserve must be non-negative, got {reserve}")
        if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
            raise ValueError(f"tail must be a whole number of tokens >= 0, got {tail!r}")
        self.ratio, self.window, self.sink, self.reserve, self.keep = ratio, window, sink, reserve, keep
        self.tail = tail
        self._plugin: BeaconPlugin | None = plugin if isinstance(plugin, BeaconPlugin) else None
        self._plugin_path = None if plugin is None or isinstance(plugin, BeaconPlugin) else os.fspath(plugin)
        self._lock = threading.Lock()
        self._ready: dict[int, BeaconPlugin] = {}  # per model (by id), checked and converted
        self._digest: str | None = None
        self._ratios_warned: set[int] = set()

    def _source(self) -> BeaconPlugin:
        """The plug-in as given or as saved (loaded on first need), before any dtype/device move."""
        with self._lock:
            if self._plugin is None:
                assert self._plugin_path is not None
                self._plugin = BeaconPlugin.load(self._plugin_path)
            return self._plugin

    def plugin_for(self, lm: LoadedModel) -> BeaconPlugin:
        """The plug-in used with ``lm``: checked against it once, in its dtype and on its device.

        A plug-in in another dtype or device is copied, not moved, so the given object (and the
        digest computed from it) stays as it was.
        """
        if self._plugin is None and self._plugin_path is None:
            return untrained_plugin(lm)
        source = self._source()
        with self._lock:
            ready = self._ready.get(id(lm.model))
            if ready is None:
                source.check_model(lm)
                param = source.beacon_embed
                ready = source
                if param.dtype != lm.dtype or param.device != lm.device:
                    ready = copy.deepcopy(source).to(device=lm.device, dtype=lm.dtype)
                self._ready[id(lm.model)] = ready
            return ready

    def spec(self) -> dict[str, Any]:
        """Name, ratio, window, sink (and reserve for ``adapt``) and the plug-in's digest.

        The untrained plug-in is named ``"untrained-v1"`` instead of a digest: its tensors are a
        function of the base weights, whose fingerprint is part of every key anyway, and the spec
        must be known before any model is at hand (the engine asks for it at construction).
        ``"untrained": true`` makes such entries easy to spot. A saved plug-in is loaded here
        (lazily) so its digest, not its path, enters the key. The digest is computed once
        (hashing a 7B model's beacon weights takes seconds): do not modify a plug-in in place after
        handing it to a compressor.
        """
        spec: dict[str, Any] = {"name": self.name, "ratio": self.ratio, "window": self.window, "sink": self.sink}
        if self._plugin is None and self._plugin_path is None:
            spec["plugin"] = UNTRAINED_ID
            spec["untrained"] = True
        else:
            source = self._source()
            if self._digest is None:
                self._digest = source.digest()
            spec["plugin"] = self._digest
            if not source.config.get("trained", True):
                spec["untrained"] = True
        if self.ratio == "adapt":
            spec["reserve"] = self.reserve
        # Both absent when off, so keys of caches built before the options stay valid.
        if self.keep:
            spec["keep"] = self.keep
        if self.tail:
            spec["tail"] = self.tail
        return spec

    def resolve_ratio(self, lm: LoadedModel, n: int, context_length: int,
                      keep_raw: list[bool] | None = None, after: int = 0) -> int:
        """The ratio for ``n`` tokens: fixed, or chosen by ``adapt`` from the position budget, where
        ``after`` raw slots (the tail) follow them besides the reserve."""
        if self.ratio != "adapt":
            return int(self.ratio)
        return choose_ratio(n, context_length, self.window, lm.max_positions, self.reserve + after, self.sink,
                            keep_raw=keep_raw)

    def _warn_if_untrained_ratio(self, plugin: BeaconPlugin, ratio: int) -> None:
        """Say once per ratio when the plug-in was never trained at it.

        Beacons learn to summarise r tokens for the ratios drawn in training; at another ratio they
        still run (the shapes do not depend on r) but quality is unmeasured and usually worse, and
        nothing else would tell the user. The plug-in's config lists its ratios (``ratios``); the
        untrained plug-in and plug-ins that record none are not judged.
        """
        trained = plugin.config.get("ratios")
        if ratio == 0 or not isinstance(trained, list) or not trained or ratio in trained:
            return
        if ratio not in self._ratios_warned:
            self._ratios_warned.add(ratio)
            logger.warning("beacon ratio %d is outside the ratios this plug-in was trained at (%s): "
                           "expect lower quality than at those", ratio, ", ".join(map(str, trained)))

    def compress(self, lm: LoadedModel, token_ids: list[int], context: KVContext) -> CompressedKV:
        plugin = self.plugin_for(lm)
        tail = min(self.tail, len(token_ids))
        older = list(token_ids[: len(token_ids) - tail])
        keep_raw = verbatim_mask(lm, older, self.keep) if self.keep else None
        ratio = self.resolve_ratio(lm, len(older), context.length, keep_raw, after=tail)
        self._warn_if_untrained_ratio(plugin, ratio)
        compressed = compress_segment(
            lm, plugin, older, context, window=self.window, ratio=ratio, sink=self.sink, keep_raw=keep_raw,
        )
        if not tail:
            return compressed
        memory = context.copy()
        memory.append(compressed)
        keys, values = prefill_pre_rope(lm, list(token_ids[len(older):]), memory)
        return CompressedKV(
            torch.cat([compressed.keys, keys], dim=2), torch.cat([compressed.values, values], dim=2),
            raw_tokens=len(token_ids), info={**compressed.info, "tail": tail},
        )
