"""LLM-based recommenders on the `recstack.llm` backends: rating prediction, reranking, and RLMRec
(LLM-written profiles aligned with a LightGCN backbone).

Each takes a language model (`recstack.llm.LocalLM`, `OpenAICompatibleLM`, usually wrapped in
`CachedLM`) and the items' titles; see docs/llm.md. RLMRec and ALLMRec import torch, so they load on
first use and the others work without torch installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from recstack.models.llm.listwise import LLMListwiseRerank
from recstack.models.llm.rating import LLMRating, RatingPredictions
from recstack.models.llm.rerank import LLMRerank


def __getattr__(name: str) -> Any:
    if name == "RLMRec":
        return importlib.import_module("recstack.models.llm.rlmrec").RLMRec
    if name == "ALLMRec":
        return importlib.import_module("recstack.models.llm.allmrec").ALLMRec
    raise AttributeError(f"module 'recstack.models.llm' has no attribute {name!r}")


__all__ = ["ALLMRec", "LLMListwiseRerank", "LLMRating", "LLMRerank", "RLMRec", "RatingPredictions"]
