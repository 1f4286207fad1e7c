"""Listwise LLM reranking with candidate-order bootstrapping (Hou et al., "Large Language Models are
Zero-Shot Rankers for Recommender Systems", ECIR 2024: LLMRank).

The user's recent titles and the retriever's top `n` candidates, numbered, go into one prompt; the LLM
answers with the candidate numbers, best first. An LLM's ranking depends on the order the candidates are
shown in (position bias), so the prompt is asked `bootstraps` times with the candidates in a different
random order each time (seeded per user), and the answers are merged by Borda count: a candidate
ranked r-th of n scores n - r. Candidates an answer leaves out share its lowest score, n - len(answer);
an answer with no valid number is counted (`n_unparsed`) and adds nothing. Ties between candidates keep
the retriever's order. Items below `n` keep the retriever's order (`RetrieveThenRank`), so the figures
are full-ranking ones.
"""

from __future__ import annotations

import re

import numpy as np
from pydantic import Field

from recstack.llm.prompts import title_of, titles_array
from recstack.models.kernels.rerank import RetrieveThenRank
from recstack.models.protocol import ModelConfig, make_config

LISTWISE_SYSTEM = "You rank movies for a user by how likely the user is to watch each one next."


def listwise_messages(history_titles, candidate_titles) -> list[dict[str, str]]:
    listed = "\n".join(f"- {t}" for t in history_titles) or "- (nothing yet)"
    numbered = "\n".join(f"{i}. {t}" for i, t in enumerate(candidate_titles, start=1))
    return [{"role": "system", "content": LISTWISE_SYSTEM},
            {"role": "user", "content": f"Movies this user watched, oldest first:\n{listed}\n\n"
                                        f"Candidates:\n{numbered}\n\nRank all {len(candidate_titles)} candidates, "
                                        "most likely first. Answer with the candidate numbers only, separated by "
                                        "commas."}]


def parse_ranking(text: str, n: int) -> list[int]:
    """The candidate numbers 1..n in the order the answer names them (0-based, each once)."""
    seen: list[int] = []
    for token in re.findall(r"(?<![0-9.])[0-9]+(?![0-9]|\.[0-9])", text):
        number = int(token)
        if 1 <= number <= n and number - 1 not in seen:
            seen.append(number - 1)
    return seen


def borda(orders: list[np.ndarray], rankings: list[list[int]], n: int) -> np.ndarray:
    """Borda points of candidates 0..n-1: `orders[b][j]` is the candidate shown j-th in prompt b,
    `rankings[b]` the prompt positions its answer named, best first. Named r-th scores n - r; the
    unnamed share n - len(named); an empty answer adds nothing. Plus a tie-break below one point that
    favours the lower index (the retriever's order)."""
    points = np.zeros(n)
    for order, ranked in zip(orders, rankings):
        if not ranked:
            continue
        named = np.asarray(order)[np.asarray(ranked)]  # prompt positions -> candidates
        floor = n - len(named)
        points += floor
        points[named] += n - np.arange(len(named)) - floor
    return points + (n - np.arange(n)) / (n + 1)


class LLMListwiseConfig(ModelConfig):
    n: int = Field(10, ge=2, le=100)
    max_history: int = Field(20, ge=0, le=500)
    bootstraps: int = Field(3, ge=1, le=20)


class LLMListwiseRerank(RetrieveThenRank):
    """`retriever`'s top `n` reordered by `lm`'s listwise answers over `bootstraps` shuffled prompts."""

    Config = LLMListwiseConfig

    def __init__(self, retriever, lm, titles: np.ndarray, config: LLMListwiseConfig | dict | None = None,
                 *, mask_history: bool = True, **params) -> None:
        given = config if isinstance(config, LLMListwiseConfig) else {**(config or {}), **params}
        self.config = make_config(LLMListwiseConfig, given)
        super().__init__(retriever, ranker=None, n=self.config.n, mask_history=mask_history)
        self.lm = lm
        self.titles = titles_array(titles)
        self.n_answers = 0
        self.n_unparsed = 0

    def title(self, item: int) -> str:
        return title_of(self.titles, item)

    def candidate_scores(self, user: int, candidates: np.ndarray, history) -> np.ndarray:
        """Borda points of each candidate over the bootstrapped answers, plus a tie-break below one point
        that keeps the order the candidates were given in (the retriever's)."""
        candidates = np.asarray(candidates)
        n = len(candidates)
        start, end = history.indptr[user], history.indptr[user + 1]
        recent = history.item[max(start, end - self.config.max_history):end] if self.config.max_history else []
        history_titles = [self.title(int(i)) for i in recent]
        rng = np.random.default_rng([self.config.seed, int(user)])
        orders = [np.arange(n) if b == 0 else rng.permutation(n) for b in range(self.config.bootstraps)]
        prompts = [self.lm.render(listwise_messages(history_titles, [self.title(int(candidates[j])) for j in order]))
                   for order in orders]
        answers = [parse_ranking(a.text, n) for a in self.lm.generate(prompts, max_new_tokens=4 * n)]
        self.n_answers += len(answers)
        self.n_unparsed += sum(not ranked for ranked in answers)
        return borda(orders, answers, n)

    def candidate_logits(self, users: np.ndarray, candidates: np.ndarray, history) -> np.ndarray:
        # the retriever's order among the candidates, best first, so ties keep it
        base = np.asarray(self.retriever.score(users, history), dtype=np.float64)
        out = np.empty(candidates.shape)
        for row, (user, cand) in enumerate(zip(users, candidates)):
            order = np.argsort(-base[row, cand], kind="stable")
            out[row, order] = self.candidate_scores(int(user), cand[order], history)
        return out
