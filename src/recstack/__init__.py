"""recstack: the recommender-systems stack (data, splits, models, evaluation, reports)."""

from recstack.errors import RecstackError

__version__ = "0.1.0"
__all__ = ["RecstackError", "__version__"]
