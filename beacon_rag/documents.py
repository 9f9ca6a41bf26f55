"""Reading documents from disk with errors that name the file and the problem."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from beacon_rag.segments import EmptyDocumentError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", ".markdown")


class DocumentError(ValueError):
    """A document could not be used; the message names the file."""


@dataclass(frozen=True)
class Document:
    text: str
    title: str
    path: str


def read_document(path: str | Path) -> Document:
    """Read one UTF-8 text file; unreadable, undecodable or empty files raise ``DocumentError``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DocumentError(f"cannot read document {path}: {err.strerror or err}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DocumentError(
            f"document {path} is not valid UTF-8 (byte {err.start}: {raw[err.start:err.start + 1]!r}); "
            "convert it to UTF-8 first"
        ) from err
    if not text.strip():
        raise EmptyDocumentError(f"document {path} is empty or whitespace only")
    return Document(text=text.strip(), title=path.name, path=str(path))


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, plus the text files inside any folder (sorted, recursive)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise DocumentError(f"no such file or folder: {path}")
    if not found:
        raise DocumentError(f"no text documents ({', '.join(TEXT_SUFFIXES)}) under {', '.join(map(str, paths))}")
    return found


def read_documents(paths: Iterable[str | Path]) -> list[Document]:
    return [read_document(p) for p in expand_paths(paths)]


def sample_documents_dir() -> Path:
    """The small corpus bundled for the demo (a fictional harbour town)."""
    return Path(__file__).parent / "data" / "sample_docs"
