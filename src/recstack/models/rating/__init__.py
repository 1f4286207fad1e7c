"""Explicit rating predictors: `fit(train)` on a log with ratings, `predict(users, items, history)` in stars.

They are the baselines of rating prediction (RMSE, MAE, AUC of rating >= 4 on held-out ratings), the
task of the LLM rating methods in `recstack.models.llm`. Not ranking models, so not in `MODELS`.
"""

from recstack.models.rating.biased_mf import BiasedMF

__all__ = ["BiasedMF"]
