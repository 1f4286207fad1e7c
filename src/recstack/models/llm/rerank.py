"""Pointwise LLM reranking inside full ranking: a retriever's top N reordered by likelihood.

The retriever (EASE, SASRec, any recstack model) scores the whole catalogue; its N best unseen items
are reordered by the language model's log-likelihood of each item's title as the answer to "name one
movie the user will watch next", after the user's most recent `max_history` titles (the pointwise
likelihood ranking of the P5 / LLMRank line of work; Hou et al., "Large Language Models are Zero-Shot
Rankers for Recommender Systems", ECIR 2024, compare it with their listwise prompts). With
`length_norm` the score is the mean log-probability per title token, so long titles are not
penalised for their length. Every item below N keeps the retriever's order (`RetrieveThenRank`), so
NDCG@10 and the rest remain full-ranking figures, comparable with every other model's.

The history prefix is encoded once per user and the N titles run as continuations on its key/value
cache (`LocalLM.continuation_logprobs`), and every answer is cached by the `recstack.llm` cache.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from recstack.llm.prompts import rank_prefix_messages, title_of, titles_array
from recstack.models.kernels.rerank import RetrieveThenRank
from recstack.models.protocol import ModelConfig, make_config


class LLMRerankConfig(ModelConfig):
    n: int = Field(20, ge=1, le=1000)
    max_history: int = Field(20, ge=0, le=500)
    length_norm: bool = True


class LLMRerank(RetrieveThenRank):
    """`retriever`'s top `n` reordered by `lm`'s likelihood of each title after the user's history."""

    Config = LLMRerankConfig

    def __init__(self, retriever, lm, titles: np.ndarray, config: LLMRerankConfig | dict | None = None,
                 *, mask_history: bool = True, **params) -> None:
        given = config if isinstance(config, LLMRerankConfig) else {**(config or {}), **params}
        self.config = make_config(LLMRerankConfig, given)
        super().__init__(retriever, ranker=None, n=self.config.n, mask_history=mask_history)
        self.lm = lm
        self.titles = titles_array(titles)
        self._title_tokens: dict[int, int] = {}

    def title(self, item: int) -> str:
        return title_of(self.titles, item)

    def prefix(self, user: int, history) -> str:
        start, end = history.indptr[user], history.indptr[user + 1]
        recent = history.item[max(start, end - self.config.max_history):end] if self.config.max_history else []
        return self.lm.render(rank_prefix_messages([self.title(int(i)) for i in recent]))

    def candidate_scores(self, user: int, candidates: np.ndarray, history) -> np.ndarray:
        """The LLM's score of each candidate item for one user (higher = more likely next)."""
        order = np.argsort(candidates, kind="stable")  # the call (and its cache key) is the same in any order
        ordered = np.asarray(candidates)[order]
        titles = [self.title(int(i)) for i in ordered]
        scores = np.asarray(self.lm.continuation_logprobs(self.prefix(user, history), titles), dtype=np.float64)
        if self.config.length_norm:
            lengths = np.array([self._tokens(int(i), t) for i, t in zip(ordered, titles)], dtype=np.float64)
            scores = scores / np.maximum(lengths, 1.0)
        out = np.empty_like(scores)
        out[order] = scores
        return out

    def _tokens(self, item: int, title: str) -> int:
        if item not in self._title_tokens:
            self._title_tokens[item] = self.lm.count_tokens(title)
        return self._title_tokens[item]

    def candidate_logits(self, users: np.ndarray, candidates: np.ndarray, history) -> np.ndarray:
        return np.stack([self.candidate_scores(int(u), row, history) for u, row in zip(users, candidates)])
