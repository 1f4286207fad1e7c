"""Validation scoring from a module's current weights while it trains (the Trainer's scorer)."""

from __future__ import annotations

import numpy as np
import torch

from recstack.data.interactions import Interactions
from recstack.models.kernels.scoring import dot_scores


class LiveScorer:
    """Scores from the module's current weights for the trainer's validation; the propagation is
    computed once per validation (every training step clears the cache). The module's `factors()`
    returns the (user, item) numpy factors."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net, self.cache = net, None

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        if self.cache is None:
            self.cache = self.net.factors()
        return dot_scores(users, items, *self.cache)
