"""LLM-based recommenders on the `recstack.llm` backends: rating prediction, reranking, RLMRec
(LLM-written profiles aligned with a LightGCN backbone) and LLMRec (LLM-augmented edges and features).

Each takes a language model (`recstack.llm.LocalLM`, `OpenAICompatibleLM`, usually wrapped in
`CachedLM`) and the items' titles; see docs/llm.md. RLMRec, LLMRec and ALLMRec import torch, so they load on
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
    if name == "LLMRec":
        return importlib.import_module("recstack.models.llm.llmrec").LLMRec
    if name == "ALLMRec":
        return importlib.import_module("recstack.models.llm.allmrec").ALLMRec
    raise AttributeError(f"module 'recstack.models.llm' has no attribute {name!r}")


__all__ = ["ALLMRec", "LLMListwiseRerank", "LLMRating", "LLMRerank", "LLMRec", "RLMRec", "RatingPredictions"]
