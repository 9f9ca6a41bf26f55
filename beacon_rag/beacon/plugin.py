"""The Activation Beacon plug-in: the few parameters that beacon positions use instead of the base ones.

Why a module of its own, separate from the base model's weights:

* The base model stays untouched and shared (the engine, the exact compressor and every request use
  it); the plug-in is applied only during compression, by routing beacon positions through it.
* Its identity is a digest of its own tensors, so a cache key says which beacon weights produced a
  compressed KV without hashing the base model again (the base has its own fingerprint).
* It is saved in a small format of our own (one safetensors file and a JSON description), and it can
  be read out of an official checkpoint, whose beacon tensors sit among the base weights under names
  such as ``model.layers.3.self_attn.beacon_k_proj.weight``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from beacon_rag.models import LoadedModel

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "beacon.safetensors"
CONFIG_FILE = "beacon_config.json"
PROJECTIONS = ("q", "k", "v", "o")

_OFFICIAL_LAYER = re.compile(r"^model\.layers\.(\d+)\.self_attn\.beacon_([qkvo])_proj\.(weight|bias)$")
_OFFICIAL_EMBED = "model.beacon_embed_tokens.weight"


class BeaconWeightsError(ValueError):
    """Beacon weights that do not fit the model, or a checkpoint whose beacon tensors are incomplete."""


def _first_eos(lm: LoadedModel) -> int:
    """The EOS id whose embedding seeds the beacon embedding (the official ``beacon_embed_init=eos``)."""
    for source in (lm.config.eos_token_id, getattr(lm.tokenizer, "eos_token_id", None)):
        if isinstance(source, (list, tuple)) and source:
            return int(source[0])
        if source is not None:
            return int(source)
    raise BeaconWeightsError("the model has no EOS token id to initialise the beacon embedding from")


class LowRankDelta(nn.Module):
    """``y = base(x) + (x A^T) B^T (+ bias delta)``: a beacon projection stored as a delta from the base.

    Why: full copies of q/k/v for every layer are most of a plug-in's size (66 MB for SmolLM2-135M),
    while training moves them only a little away from the base. The base weight and bias are
    *buffers that are not persisted* (``persistent=False``): they are taken from the model when the
    plug-in is built or bound (``BeaconPlugin.bind``), never written to disk, and never trained.
    ``B`` starts at zero, so a fresh delta is exactly the base projection (the untrained copy).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.bias_delta = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer("base_weight", None, persistent=False)
        self.register_buffer("base_bias", None, persistent=False)

    @property
    def bound(self) -> bool:
        return self.base_weight is not None

    def set_base(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Point at the base projection's tensors (shared, detached: no copy, no gradient)."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise BeaconWeightsError(
                f"base projection {tuple(weight.shape)} does not fit a low-rank delta "
                f"{(self.out_features, self.in_features)}"
            )
        self.base_weight = weight.detach()
        self.base_bias = None if bias is None else bias.detach()

    @property
    def weight(self) -> torch.Tensor:
        """The effective full weight (for export and comparisons; the forward never builds it)."""
        self._require_base()
        return self.base_weight + self.lora_B @ self.lora_A

    @property
    def bias(self) -> torch.Tensor | None:
        if self.bias_delta is None and self.base_bias is None:
            return None
        self._require_base()
        if self.bias_delta is None:
            return self.base_bias
        return self.bias_delta if self.base_bias is None else self.base_bias + self.bias_delta

    def _require_base(self) -> None:
        if self.base_weight is None:
            raise BeaconWeightsError(
                "this low-rank beacon plug-in has no base weights: load it with "
                "BeaconPlugin.load(folder, lm) or call plugin.bind(lm) before compressing"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._require_base()
        out = torch.nn.functional.linear(x, self.base_weight, self.base_bias)
        out = out + torch.nn.functional.linear(torch.nn.functional.linear(x, self.lora_A), self.lora_B)
        if self.bias_delta is not None:
            out = out + self.bias_delta
        return out


class _BeaconLayer(nn.Module):
    """One decoder layer's beacon projections, with the base projections' shapes and bias flags.

    With ``low_rank`` each projection is a ``LowRankDelta`` over the base projection instead of a
    full ``nn.Linear``.
    """

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int,
                 qkv_bias: bool, o_bias: bool, with_o: bool, low_rank: int | None = None) -> None:
        super().__init__()

        def make(n_in: int, n_out: int, bias: bool) -> nn.Module:
            if low_rank:
                return LowRankDelta(n_in, n_out, low_rank, bias)
            return nn.Linear(n_in, n_out, bias=bias)

        self.beacon_q_proj = make(hidden, heads * head_dim, qkv_bias)
        self.beacon_k_proj = make(hidden, kv_heads * head_dim, qkv_bias)
        self.beacon_v_proj = make(hidden, kv_heads * head_dim, qkv_bias)
        self.beacon_o_proj = make(heads * head_dim, hidden, o_bias) if with_o else None

    def projection(self, which: str) -> nn.Module | None:
        return getattr(self, f"beacon_{which}_proj")


class BeaconPlugin(nn.Module):
    """Beacon embedding (1 x hidden) and per-layer beacon q/k/v(/o) projections for one base model.

    ``config`` records the shapes and the base model fingerprint it was built or trained for; it is
    what ``save`` writes next to the tensors and what ``load`` checks a model against.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(config)
        c = self.config
        self.beacon_embed = nn.Parameter(torch.zeros(1, c["hidden_size"]))
        self.layers = nn.ModuleList(
            _BeaconLayer(c["hidden_size"], c["num_heads"], c["num_kv_heads"], c["head_dim"],
                         c["qkv_bias"], c["o_bias"], c["with_o"], c.get("low_rank"))
            for _ in range(c["num_layers"])
        )

    # ------------------------------------------------------------------ construction
    @staticmethod
    def config_for(lm: LoadedModel, with_o: bool = False) -> dict[str, Any]:
        """The description of a plug-in matching ``lm`` (shapes, bias flags, base fingerprint)."""
        attn = lm.model.model.layers[0].self_attn
        return {
            "format_version": FORMAT_VERSION,
            "family": lm.family,
            "hidden_size": int(lm.config.hidden_size),
            "num_layers": lm.num_layers,
            "num_heads": int(lm.config.num_attention_heads),
            "num_kv_heads": lm.num_kv_heads,
            "head_dim": lm.head_dim,
            "qkv_bias": attn.q_proj.bias is not None,
            "o_bias": attn.o_proj.bias is not None,
            "with_o": bool(with_o),
            "base_fingerprint": lm.fingerprint,
            "trained": False,
        }

    @classmethod
    def from_model(cls, lm: LoadedModel, with_o: bool = False, low_rank: int | None = None,
                   seed: int = 0) -> BeaconPlugin:
        """The untrained plug-in: copies of the base projections and the EOS embedding.

        This is the official starting point ("beacon attention = normal attention"); compressing
        with it is a well-defined but untrained baseline, which ``config['trained'] = False`` and
        the digest (it covers the copied tensors) make visible in cache keys.

        ``low_rank=r`` builds the same starting point as base + ``B @ A`` deltas of rank ``r``
        (``A`` small random from ``seed``, ``B`` zero), bound to ``lm``'s projections: it computes
        exactly what the full copy computes, but only the deltas are saved and trained.
        """
        if low_rank is not None and (isinstance(low_rank, bool) or int(low_rank) < 1):
            raise ValueError(f"low_rank must be a positive integer, got {low_rank!r}")
        config = cls.config_for(lm, with_o=with_o)
        if low_rank:
            config["low_rank"] = int(low_rank)
        plugin = cls(config)
        embed = lm.model.model.embed_tokens.weight
        if low_rank:
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                plugin.beacon_embed.copy_(embed[_first_eos(lm)].detach()[None])
                for beacon in plugin.layers:
                    for which in PROJECTIONS:
                        target = beacon.projection(which)
                        if target is not None:
                            # Kaiming-like scale: x A^T keeps x's magnitude, so B's updates are well scaled.
                            target.lora_A.copy_(torch.randn(target.lora_A.shape, generator=generator)
                                                / target.in_features ** 0.5)
            plugin = plugin.to(device=lm.device, dtype=lm.dtype)
            plugin.bind(lm)
            return plugin.requires_grad_(False)
        with torch.no_grad():
            plugin.beacon_embed.copy_(embed[_first_eos(lm)].detach()[None])
            for layer, beacon in zip(lm.model.model.layers, plugin.layers):
                for which in PROJECTIONS:
                    target = beacon.projection(which)
                    if target is None:
                        continue
                    base = getattr(layer.self_attn, f"{which}_proj")
                    target.weight.copy_(base.weight.detach())
                    if base.bias is not None:
                        target.bias.copy_(base.bias.detach())
        return plugin.to(device=lm.device, dtype=lm.dtype).requires_grad_(False)

    # ------------------------------------------------------------------ low rank
    @property
    def low_rank(self) -> int | None:
        """The rank of the deltas, or ``None`` for a full-rank plug-in."""
        rank = self.config.get("low_rank")
        return int(rank) if rank else None

    def widen_from(self, source: BeaconPlugin) -> None:
        """Take over ``source``'s weights in this plug-in of equal or larger capacity.

        Why: a warm start that also adds capacity (a trained rank-32 plug-in continued at rank 96,
        or as full copies) should start from what was learned, not from scratch. ``source``'s
        deltas fill the first ``r`` directions; the extra directions keep this plug-in's random
        ``A`` rows and zero ``B`` columns, so the result computes exactly what ``source`` computes
        while the new directions still receive gradients. A full-rank plug-in takes ``source``'s
        effective weights. Both must be bound to the same model (low-rank weights need the base).
        """
        if self.with_o != source.with_o or len(self.layers) != len(source.layers):
            raise BeaconWeightsError("cannot widen: the plug-ins differ in layers or in the o projection")
        if source.low_rank is None and self.low_rank is not None:
            raise BeaconWeightsError("cannot widen a full-rank plug-in into low-rank deltas (it would lose weights)")
        if source.low_rank and self.low_rank and source.low_rank > self.low_rank:
            raise BeaconWeightsError(f"cannot widen rank {source.low_rank} into the smaller rank {self.low_rank}")
        with torch.no_grad():
            self.beacon_embed.copy_(source.beacon_embed)
            for mine, theirs in zip(self.layers, source.layers):
                for which in PROJECTIONS:
                    target, given = mine.projection(which), theirs.projection(which)
                    if target is None or given is None:
                        continue
                    if isinstance(target, LowRankDelta):
                        assert isinstance(given, LowRankDelta)
                        rank = given.rank
                        target.lora_A[:rank].copy_(given.lora_A)
                        target.lora_B.zero_()
                        target.lora_B[:, :rank].copy_(given.lora_B)
                        if target.bias_delta is not None and given.bias_delta is not None:
                            target.bias_delta.copy_(given.bias_delta)
                    else:
                        target.weight.copy_(given.weight)
                        if target.bias is not None and given.bias is not None:
                            target.bias.copy_(given.bias)

    @property
    def bound(self) -> bool:
        """Whether every projection can compute (always for full rank; low rank needs base weights)."""
        return all(module.bound for module in self.modules() if isinstance(module, LowRankDelta))

    def bind(self, lm: LoadedModel) -> BeaconPlugin:
        """Attach ``lm``'s q/k/v(/o) projections as the base of every low-rank delta (in place).

        The base tensors are shared with the model, not copied: they are frozen anyway, and a copy
        would cost as much memory as the full-rank plug-in the low-rank form exists to avoid.
        A full-rank plug-in is left as it is.
        """
        if not self.low_rank:
            return self
        if len(lm.model.model.layers) != len(self.layers):
            raise BeaconWeightsError(
                f"low-rank beacon plug-in has {len(self.layers)} layers, model {lm.name!r} has "
                f"{len(lm.model.model.layers)}"
            )
        for layer, beacon in zip(lm.model.model.layers, self.layers):
            for which in PROJECTIONS:
                target = beacon.projection(which)
                if target is None:
                    continue
                base = getattr(layer.self_attn, f"{which}_proj")
                weight = base.weight.to(device=target.lora_A.device, dtype=target.lora_A.dtype)
                bias = None if base.bias is None else base.bias.to(device=weight.device, dtype=weight.dtype)
                target.set_base(weight, bias)
        return self

    # ------------------------------------------------------------------ identity
    @property
    def with_o(self) -> bool:
        return bool(self.config["with_o"])

    def digest(self) -> str:
        """sha256 over every tensor (name, dtype, shape, bytes): the plug-in's identity in cache keys.

        The JSON config is left out on purpose: the same tensors give the same compression whatever
        file they came from, and the tensors' names and shapes already say whether ``o`` is present.
        A low-rank plug-in's tensors are only deltas, so its digest also covers the rank and the
        fingerprint of the base model the deltas were made for (they mean nothing without it).
        """
        h = hashlib.sha256(f"beacon-plugin-v{FORMAT_VERSION}|".encode())
        if self.low_rank:
            h.update(f"low_rank={self.low_rank}|base={self.config.get('base_fingerprint')}|".encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    # ------------------------------------------------------------------ checks
    def check_model(self, lm: LoadedModel) -> None:
        """Refuse a model whose shapes differ from this plug-in's; warn on a different fingerprint.

        A different fingerprint is only a warning: a dtype conversion or a re-quantized copy of the
        same base changes it, and those are legitimate uses of the same beacon weights.
        """
        expected = self.config_for(lm, with_o=self.with_o)
        mismatched = [
            f"{key}: plug-in {self.config.get(key)!r}, model {expected[key]!r}"
            for key in ("family", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                        "head_dim", "qkv_bias", "o_bias")
            if self.config.get(key) != expected[key]
        ]
        if mismatched:
            raise BeaconWeightsError(
                f"beacon weights do not fit model {lm.name!r}: " + "; ".join(mismatched)
            )
        if self.low_rank and not self.bound:
            # A low-rank plug-in loaded without a model (e.g. lazily by BeaconCompressor) gets its
            # base projections from the first model it is checked against.
            self.bind(lm)
        trained_for = self.config.get("base_fingerprint")
        if trained_for and trained_for != lm.fingerprint:
            logger.warning(
                "beacon weights were made for base model %s… but %r has fingerprint %s…; "
                "shapes match, continuing", str(trained_for)[:12], lm.name, lm.fingerprint[:12]
            )

    def _check_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Exact name and shape agreement between ``tensors`` and this plug-in's parameters."""
        expected = {name: tuple(t.shape) for name, t in self.state_dict().items()}
        missing = sorted(set(expected) - set(tensors))
        unknown = sorted(set(tensors) - set(expected))
        wrong = sorted(
            f"{name} {tuple(tensors[name].shape)} != {expected[name]}"
            for name in set(expected) & set(tensors)
            if tuple(tensors[name].shape) != expected[name]
        )
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if unknown:
            problems.append(f"unknown {unknown}")
        if wrong:
            problems.append(f"wrong shapes {wrong}")
        if problems:
            raise BeaconWeightsError("beacon tensors do not match their config: " + "; ".join(problems))

    # ------------------------------------------------------------------ our own format
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``beacon.safetensors`` and ``beacon_config.json`` into ``directory`` (created)."""
        from safetensors.torch import save_file

        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in self.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "beacon_rag.plugin"})
        description = {**self.config, "format_version": FORMAT_VERSION,
                       "dtype": str(self.beacon_embed.dtype).removeprefix("torch."),
                       "digest": self.digest()}
        tmp = folder / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(description, indent=1, sort_keys=True))
        tmp.replace(folder / CONFIG_FILE)
        return folder

    @classmethod
    def load(cls, directory: str | os.PathLike[str], lm: LoadedModel | None = None) -> BeaconPlugin:
        """Read a plug-in written by ``save``; with ``lm``, check it fits and move it to lm's dtype/device.

        The digest recorded at save time is compared with the loaded tensors, so a truncated or
        edited file is reported instead of silently producing different caches.
        """
        from safetensors.torch import load_file

        folder = Path(directory)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise FileNotFoundError(f"{folder} lacks {CONFIG_FILE} or {WEIGHTS_FILE}")
        config = json.loads(config_path.read_text())
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise BeaconWeightsError(f"{config_path}: format version {version!r}, expected {FORMAT_VERSION}")
        required = ("family", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                    "qkv_bias", "o_bias", "with_o")
        absent = [key for key in required if key not in config]
        if absent:
            raise BeaconWeightsError(f"{config_path}: config lacks {absent}")
        recorded_digest = config.pop("digest", None)
        dtype_name = config.pop("dtype", "float32")
        tensors = load_file(str(weights_path))
        plugin = cls(config)
        plugin._check_tensors(tensors)
        plugin = plugin.to(dtype=getattr(torch, dtype_name))
        plugin.load_state_dict(tensors)
        if recorded_digest is not None and plugin.digest() != recorded_digest:
            raise BeaconWeightsError(f"{weights_path}: tensors do not match the digest recorded at save time")
        plugin.requires_grad_(False)
        if lm is not None:
            plugin.check_model(lm)
            plugin = plugin.to(device=lm.device, dtype=lm.dtype)
            plugin.bind(lm)  # again after the move: the base must be in the plug-in's dtype/device
        elif plugin.low_rank:
            logger.info("low-rank beacon plug-in %s loaded without a model: it stores only deltas, so it "
                        "cannot compress until bound (BeaconPlugin.load(folder, lm) or plugin.bind(lm))",
                        folder)
        return plugin

    # ------------------------------------------------------------------ official layout
    def to_official_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors under the names the official checkpoints use (for export and for tests)."""
        out = {_OFFICIAL_EMBED: self.beacon_embed.detach().clone()}
        for index, layer in enumerate(self.layers):
            for which in PROJECTIONS:
                proj = layer.projection(which)
                if proj is None:
                    continue
                prefix = f"model.layers.{index}.self_attn.beacon_{which}_proj"
                out[f"{prefix}.weight"] = proj.weight.detach().clone()
                if proj.bias is not None:
                    out[f"{prefix}.bias"] = proj.bias.detach().clone()
        return out

    @classmethod
    def from_official_state_dict(cls, state_dict: Mapping[str, torch.Tensor], lm: LoadedModel) -> BeaconPlugin:
        """Take the beacon tensors out of an official (full-model) state dict; ignore base weights.

        Any name containing ``beacon`` that is not a known beacon tensor, or that names a layer the
        model lacks, or a bias the base projection lacks, is an error: silently dropping a tensor
        would compress with half-loaded weights. Missing tensors are listed as well. ``o`` is
        optional (only the older Llama-2 release has it) but then required in every layer.
        """
        config = cls.config_for(lm, with_o=False)
        config["base_fingerprint"] = None  # unknown: the checkpoint names its base only by hub id
        config["trained"] = True
        beacon_names = [name for name in state_dict if "beacon" in name]
        unknown: list[str] = []
        found: dict[str, torch.Tensor] = {}
        for name in beacon_names:
            if name == _OFFICIAL_EMBED:
                found["beacon_embed"] = state_dict[name]
                continue
            match = _OFFICIAL_LAYER.match(name)
            if match is None:
                unknown.append(name)
                continue
            index, which, kind = int(match.group(1)), match.group(2), match.group(3)
            has_bias = config["o_bias"] if which == "o" else config["qkv_bias"]
            if index >= config["num_layers"] or (kind == "bias" and not has_bias):
                unknown.append(name)
                continue
            found[f"layers.{index}.beacon_{which}_proj.{kind}"] = state_dict[name]
        config["with_o"] = any(".beacon_o_proj." in key for key in found)
        plugin = cls(config)
        expected = set(plugin.state_dict())
        missing = sorted(expected - set(found))
        if unknown or missing:
            official = {v: k for k, v in _official_names(plugin).items()}
            parts = []
            if missing:
                parts.append("missing " + ", ".join(official.get(name, name) for name in missing))
            if unknown:
                parts.append("unknown beacon tensors " + ", ".join(sorted(unknown)))
            raise BeaconWeightsError(f"official beacon checkpoint does not fit {lm.name!r}: " + "; ".join(parts))
        try:
            plugin._check_tensors(found)
        except BeaconWeightsError as err:
            raise BeaconWeightsError(f"official beacon checkpoint does not fit {lm.name!r}: {err}") from None
        ignored = len(state_dict) - len(beacon_names)
        logger.info("loaded %d beacon tensors (with_o=%s), ignored %d base tensors",
                    len(found), config["with_o"], ignored)
        plugin = plugin.to(device=lm.device, dtype=lm.dtype)
        with torch.no_grad():
            for name, param in plugin.state_dict().items():
                param.copy_(found[name].to(param.dtype))
        return plugin.requires_grad_(False)

    @classmethod
    def from_official_checkpoint(cls, path: str | os.PathLike[str], lm: LoadedModel) -> BeaconPlugin:
        """Read the beacon tensors from an official checkpoint folder (or one .safetensors file).

        Only tensors whose name mentions ``beacon`` are read, so a 7B checkpoint costs a few MB of
        reading, not 15 GB. ``.bin`` (pickle) files are refused: nothing read from disk is unpickled.
        """
        from safetensors import safe_open

        source = Path(path)
        files = [source] if source.is_file() else sorted(source.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no .safetensors files in {source} (pickled .bin files are not read)")
        tensors: dict[str, torch.Tensor] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    if "beacon" in name:
                        tensors[name] = handle.get_tensor(name)
        return cls.from_official_state_dict(tensors, lm)


def _official_names(plugin: BeaconPlugin) -> dict[str, str]:
    """Official name -> our name, for every tensor of ``plugin`` (used in error messages)."""
    names = {_OFFICIAL_EMBED: "beacon_embed"}
    for name in plugin.state_dict():
        match = re.match(r"^layers\.(\d+)\.beacon_([qkvo])_proj\.(weight|bias)$", name)
        if match:
            names[f"model.layers.{match.group(1)}.self_attn.beacon_{match.group(2)}_proj.{match.group(3)}"] = name
    return names
