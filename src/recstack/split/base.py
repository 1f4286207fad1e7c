"""`Split`: train / valid / test over one pair of vocabularies, with a fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from recstack.data.interactions import Interactions

# what a model reads when ranking for test: train + valid (the default), or train only (RecBole, implicit)
TEST_HISTORIES = ("train_valid", "train")


@dataclass(frozen=True)
class Split:
    """Three disjoint event logs sharing `users` and `items`.

    `history("valid")` is train; `history("test")` is train + valid (+ `test_fold_in`): what a
    model may see when it is asked to rank for that part (`history("test", "train")`: train
    (+ `test_fold_in`) only, the test history of RecBole and implicit). `test_fold_in` holds the visible
    part of held-out users' histories in a user-holdout (strong generalisation) split: it is
    never trained on, only shown to the model at test time. A part whose `item_pool` is set is
    ranked against those items only (a cold-item split ranks each part's cold items).
    """

    train: Interactions
    valid: Interactions
    test: Interactions
    method: str = "unknown"
    params: dict[str, Any] = field(default_factory=dict)
    test_fold_in: Interactions | None = None

    def item_pool(self, part: Literal["valid", "test"]) -> np.ndarray | None:
        """The item indices ranked when evaluating `part`; None means the whole catalogue."""
        if part not in ("valid", "test"):
            raise ValueError(f"item_pool is defined for 'valid' or 'test', not {part!r}")
        return getattr(self, part).item_pool

    def __post_init__(self) -> None:
        for part in (self.valid, self.test, self.test_fold_in):
            if part is None:
                continue
            if part.users != self.train.users or part.items != self.train.items:
                raise ValueError("all parts of a split must share the train vocabularies")

    def history(self, part: Literal["valid", "test"],
                test_history: Literal["train_valid", "train"] = "train_valid") -> Interactions:
        if test_history not in TEST_HISTORIES:
            raise ValueError(f"test_history must be one of {', '.join(TEST_HISTORIES)}, not {test_history!r}")
        if part == "valid":
            return self.train
        if part == "test":
            if test_history == "train":
                return self.train if self.test_fold_in is None else self._train_and_fold_in
            return self._test_history
        raise ValueError(f"history is defined for 'valid' or 'test', not {part!r}")

    @property
    def _train_and_fold_in(self) -> Interactions:
        cached = self.__dict__.get("_train_fold_in_cache")
        if cached is None:
            cached = self.train.concat(self.test_fold_in)
            object.__setattr__(self, "_train_fold_in_cache", cached)
        return cached

    @property
    def _test_history(self) -> Interactions:
        cached = self.__dict__.get("_test_history_cache")
        if cached is None:
            cached = self.train.concat(self.valid)
            if self.test_fold_in is not None:
                cached = cached.concat(self.test_fold_in)
            object.__setattr__(self, "_test_history_cache", cached)
        return cached

    def fingerprint(self) -> str:
        """Hash of the three parts' contents: equal fingerprints mean identical splits."""
        h = hashlib.sha1()
        for part in (self.train, self.valid, self.test, self.test_fold_in):
            h.update(b"-" if part is None else part.fingerprint().encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": self.params,
            "fingerprint": self.fingerprint(),
            **{f"{name}_events": len(getattr(self, name)) for name in ("train", "valid", "test")},
            **{f"{name}_users": int((getattr(self, name).user_counts() > 0).sum()) for name in ("train", "valid", "test")},
            **({"item_pool_sizes": {name: int(len(getattr(self, name).item_pool)) for name in ("valid", "test")}}
               if self.valid.item_pool is not None and self.test.item_pool is not None else {}),
        }
