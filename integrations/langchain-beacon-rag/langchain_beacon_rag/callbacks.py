"""A callback handler that registers every retriever's output with a beacon-rag model.

Why a callback: it needs no change to the chain at all. ``create_stuff_documents_chain`` and
``format_docs`` still join the documents into one string; the model then finds each
registered text verbatim in that string and caches it as its own segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document


class DocumentRegistrationHandler(BaseCallbackHandler):
    """``on_retriever_end`` -> ``model.register_documents(documents)``.

    ``run_inline`` so that in async runs the registration happens before the model call that
    follows the retriever, not later in an executor.
    """

    run_inline = True

    def __init__(self, model: Any) -> None:
        self.model = model

    def on_retriever_end(self, documents: Sequence[Document], **kwargs: Any) -> None:
        self.model.register_documents(list(documents))
