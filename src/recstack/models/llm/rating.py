"""LLM rating prediction, zero- and few-shot (Kang et al., "Do LLMs Understand User Preferences?
Evaluating LLMs on User Rating Prediction", 2023).

The prompt lists the user's most recent rated movies with their stars and asks for the rating of the
target movie (`recstack.llm.prompts.rating_messages`). Two predictions come from each prompt:
- `expected`: the expected rating under the model's next-token distribution restricted to the digits
  1..5, sum_r r * p(r) / sum_r p(r) (a continuous score, hence also the AUC's ranking score);
- `parsed`: the first digit 1..5 of the greedy answer. An answer without one is counted in
  `n_unparsed` and its prediction falls back to `expected`: a counted, reported fallback, never a
  silent default rating.
Few-shot (`shots` > 0) turns the user's `shots` ratings just before the listed history's end into
demonstration turns (question, answer), so the examples are the user's own and never the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.llm.prompts import RATING_OPTIONS, parse_rating, rating_messages, title_of, titles_array
from recstack.models.protocol import ModelConfig, make_config


class LLMRatingConfig(ModelConfig):
    shots: int = Field(0, ge=0, le=10)
    max_history: int = Field(10, ge=0, le=200)
    answer_tokens: int = Field(12, ge=1, le=64)


@dataclass(frozen=True)
class RatingPredictions:
    expected: np.ndarray  # float64 stars
    parsed: np.ndarray  # float64 stars; NaN where the answer held no rating
    n_unparsed: int
    prompts: list[str]
    answers: list[str]

    def with_fallback(self) -> np.ndarray:
        return np.where(np.isnan(self.parsed), self.expected, self.parsed)


class LLMRating:
    """Zero-/few-shot rating prediction with a language model (`recstack.llm` backend) and item titles."""

    Config = LLMRatingConfig

    def __init__(self, lm, titles: np.ndarray, config: LLMRatingConfig | dict | None = None, **params) -> None:
        self.lm = lm
        self.titles = titles_array(titles)
        given = config if isinstance(config, LLMRatingConfig) else {**(config or {}), **params}
        self.config = make_config(LLMRatingConfig, given)

    def title(self, item: int) -> str:
        return title_of(self.titles, item)

    def messages(self, user: int, item: int, history: Interactions) -> list[dict[str, str]]:
        start, end = history.indptr[user], history.indptr[user + 1]
        return self.messages_from(history.item[start:end], history.value[start:end], item)

    def messages_from(self, items: np.ndarray, ratings: np.ndarray, item: int) -> list[dict[str, str]]:
        """The prompt for `item` after a user's rated `items` (oldest first)."""
        cfg = self.config
        demos = []
        if cfg.shots:
            demo_items, demo_ratings = items[-cfg.shots:], ratings[-cfg.shots:]
            items, ratings = items[:-cfg.shots], ratings[:-cfg.shots]
            demos = [(self.title(int(i)), float(r)) for i, r in zip(demo_items, demo_ratings)]
        keep = slice(max(0, len(items) - cfg.max_history), len(items)) if cfg.max_history else slice(0, 0)
        return rating_messages([self.title(int(i)) for i in items[keep]], ratings[keep], self.title(int(item)), demos)

    def fit_lora(self, train: Interactions, n_examples: int, settings=None, *, store=None) -> "LLMRating":
        """Kang et al.'s fine-tuned variant: LoRA on `n_examples` of the training part's own ratings (each
        asked with the ratings before it as the prompt, its stars as the answer). The model's `lm` becomes
        the tuned copy (`tuning_` records the training); `lm` must be a `recstack.llm.LocalLM`. With
        `store` (a folder) trained adapters are kept and the same tuning is loaded instead of retrained."""
        from recstack.llm.lora import LoRASettings, draw_examples, finetune_lora

        if train.value is None:
            raise RecstackError("fine-tuning rating prediction needs ratings; this log has no value column")
        settings = settings or LoRASettings(seed=self.config.seed)
        rng = np.random.default_rng(self.config.seed)
        prompts, answers = [], []
        for user, position in draw_examples(train, n_examples, rng):
            start = train.indptr[user]
            messages = self.messages_from(train.item[start:start + position], train.value[start:start + position],
                                          int(train.item[start + position]))
            prompts.append(self.lm.render(messages))
            answers.append(str(int(round(float(train.value[start + position])))))
        self.lm, self.tuning_ = finetune_lora(self.lm, prompts, answers, settings, store=store)
        return self

    def predict(self, users: np.ndarray, items: np.ndarray, history: Interactions) -> RatingPredictions:
        """Both predictions for each (user, item) pair, the user's ratings in `history` as the prompt."""
        if history.value is None:
            raise RecstackError("LLM rating prediction needs the ratings of the history; this log has no value column")
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        if users.shape != items.shape:
            raise ValueError(f"users and items differ in length: {users.shape} vs {items.shape}")
        prompts = [self.lm.render(self.messages(int(u), int(i), history)) for u, i in zip(users, items)]
        stars = np.array([float(o) for o in RATING_OPTIONS])
        expected = np.empty(len(prompts))
        for row, prompt in enumerate(prompts):
            logprobs = np.asarray(self.lm.option_logprobs(prompt, RATING_OPTIONS), dtype=np.float64)
            weights = np.exp(logprobs - logprobs.max())
            expected[row] = float(stars @ weights / weights.sum())
        answers = [g.text for g in self.lm.generate(prompts, self.config.answer_tokens)]
        parsed = np.array([np.nan if (r := parse_rating(a)) is None else float(r) for a in answers])
        return RatingPredictions(expected, parsed, int(np.isnan(parsed).sum()), prompts, answers)
