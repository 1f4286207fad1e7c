"""TALLRec (Bao et al., "TALLRec: An Effective and Efficient Tuning Framework to Align Large Language Models
with Recommendation", RecSys 2023): LoRA instruction tuning on "will the user like X? Yes/No" from few
examples.

Each example lists the user's recent liked ("User Preference") and disliked ("User Unpreference") movies,
rating >= `like_threshold` being liked, as the paper does on MovieLens, and asks whether the user will like
the target; the answer is "Yes." or "No.". `fit(train)` draws `n_examples` such examples from the
training part (each target with the ratings before it as its history; `recstack.llm.lora.draw_examples`)
and trains LoRA adapters on the query and value projections with the loss on the answer only
(`recstack.llm.lora.finetune_lora`); `n_examples: 0` is the untuned model (zero-shot). The prediction is
P(Yes) / (P(Yes) + P(No)) at the answer's first token, evaluated by AUC against the held-out label.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.llm.prompts import title_of, titles_array
from recstack.models.protocol import ModelConfig, make_config

TALLREC_SYSTEM = "You are a movie recommender. Answer only Yes. or No."


def tallrec_messages(liked: list[str], disliked: list[str], target: str) -> list[dict[str, str]]:
    preference = ", ".join(f'"{t}"' for t in liked) or "(none)"
    unpreference = ", ".join(f'"{t}"' for t in disliked) or "(none)"
    return [{"role": "system", "content": TALLREC_SYSTEM},
            {"role": "user", "content": f"User Preference: {preference}\nUser Unpreference: {unpreference}\n"
                                        f'Whether the user will like the target movie "{target}"?'}]


class TALLRecConfig(ModelConfig):
    n_examples: int = Field(64, ge=0)
    max_history: int = Field(10, ge=1, le=100)
    like_threshold: float = 4.0
    rank: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    learning_rate: float = Field(3e-4, gt=0)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)
    lora_store: str | None = None  # a folder keeping trained adapters: the same tuning is loaded, not retrained


class TALLRec:
    """Yes/No preference prediction with a LoRA-tuned local LM (`recstack.llm.LocalLM`) and item titles."""

    Config = TALLRecConfig

    def __init__(self, lm, titles: np.ndarray, config: TALLRecConfig | dict | None = None, **params) -> None:
        self.base = lm
        self.titles = titles_array(titles)
        given = config if isinstance(config, TALLRecConfig) else {**(config or {}), **params}
        self.config = make_config(TALLRecConfig, given)

    def title(self, item: int) -> str:
        return title_of(self.titles, item)

    def messages_from(self, items: np.ndarray, ratings: np.ndarray, item: int) -> list[dict[str, str]]:
        recent = slice(max(0, len(items) - self.config.max_history), len(items))
        items, ratings = items[recent], ratings[recent]
        liked = [self.title(int(i)) for i, r in zip(items, ratings) if r >= self.config.like_threshold]
        disliked = [self.title(int(i)) for i, r in zip(items, ratings) if r < self.config.like_threshold]
        return tallrec_messages(liked, disliked, self.title(int(item)))

    def fit(self, train: Interactions) -> "TALLRec":
        from recstack.llm.lora import LoRASettings, draw_examples, finetune_lora

        if train.value is None:
            raise RecstackError("TALLRec labels examples by rating; the training log has no value column")
        cfg = self.config
        self.lm_, self.tuning_ = self.base, None
        if cfg.n_examples == 0:
            return self
        rng = np.random.default_rng(cfg.seed)
        prompts, answers = [], []
        for user, position in draw_examples(train, cfg.n_examples, rng):
            start = train.indptr[user]
            messages = self.messages_from(train.item[start:start + position], train.value[start:start + position],
                                          int(train.item[start + position]))
            prompts.append(self.base.render(messages))
            answers.append("Yes." if train.value[start + position] >= cfg.like_threshold else "No.")
        settings = LoRASettings(rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, learning_rate=cfg.learning_rate,
                                epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed)
        self.lm_, self.tuning_ = finetune_lora(self.base, prompts, answers, settings, store=cfg.lora_store)
        return self

    def predict_proba(self, users: np.ndarray, items: np.ndarray, history: Interactions) -> np.ndarray:
        """P(Yes) among {Yes, No} for each (user, item), the user's ratings in `history` as the prompt."""
        if not hasattr(self, "lm_"):
            raise RecstackError("TALLRec is not fitted: call fit(train) first (n_examples: 0 for the untuned model)")
        if history.value is None:
            raise RecstackError("TALLRec reads the history's ratings; this log has no value column")
        out = np.empty(len(users))
        for row, (user, item) in enumerate(zip(np.asarray(users), np.asarray(items))):
            start, end = history.indptr[user], history.indptr[user + 1]
            prompt = self.lm_.render(self.messages_from(history.item[start:end], history.value[start:end], int(item)))
            yes, no = self.lm_.option_logprobs(prompt, ["Yes", "No"])
            out[row] = 1.0 / (1.0 + np.exp(no - yes))
        return out
