"""Retrieve then rank with a CTR ranker: `RetrieveThenRank` lives in `recstack.models.kernels.rerank`,
shared with the LLM rerankers; this name stays for the CTR experiments and users' imports."""

from recstack.models.kernels.rerank import RetrieveThenRank

__all__ = ["RetrieveThenRank"]
