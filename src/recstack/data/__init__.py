"""Data: vocabularies, interaction logs, datasets, loaders and preprocessing."""

from recstack.data.dataset import Dataset, KnowledgeGraph
from recstack.data.interactions import Interactions, UnknownIdError, Vocab

__all__ = ["Dataset", "Interactions", "KnowledgeGraph", "UnknownIdError", "Vocab"]
