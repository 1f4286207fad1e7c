"""Evaluation: full-ranking accuracy over pinned metric definitions."""

from recstack.evaluate.evaluator import (DEFAULT_KS, DEFAULT_METRICS, ColdUsers, EvalResult, HistoryCounts, Scorer,
                                         count_history, evaluate, rank)
from recstack.evaluate.rankings import Rankings

__all__ = ["DEFAULT_KS", "DEFAULT_METRICS", "ColdUsers", "EvalResult", "HistoryCounts", "Rankings", "Scorer",
           "count_history", "evaluate", "rank"]
