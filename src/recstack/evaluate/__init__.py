"""Evaluation: full-ranking accuracy over pinned metric definitions."""

from recstack.evaluate.evaluator import DEFAULT_KS, DEFAULT_METRICS, EvalResult, Scorer, evaluate, rank
from recstack.evaluate.rankings import Rankings

__all__ = ["DEFAULT_KS", "DEFAULT_METRICS", "EvalResult", "Rankings", "Scorer", "evaluate", "rank"]
