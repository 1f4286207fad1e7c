"""LLM-based recommenders on the `recstack.llm` backends: rating prediction and reranking.

Each takes a language model (`recstack.llm.LocalLM`, `OpenAICompatibleLM`, usually wrapped in
`CachedLM`) and the items' titles; see docs/llm.md.
"""

from recstack.models.llm.listwise import LLMListwiseRerank
from recstack.models.llm.rating import LLMRating, RatingPredictions
from recstack.models.llm.rerank import LLMRerank

__all__ = ["LLMListwiseRerank", "LLMRating", "LLMRerank", "RatingPredictions"]
