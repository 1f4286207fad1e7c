"""Data: vocabularies, interaction logs, datasets, loaders and preprocessing."""

from recstack.data.dataset import Dataset, KnowledgeGraph
from recstack.data.interactions import Interactions, UnknownIdError, Vocab
from recstack.data.load import load_atomic, load_movielens, load_table, read_table
from recstack.data.prep import compact, deduplicate, k_core, preprocess, summarize, to_implicit

__all__ = [
    "Dataset", "Interactions", "KnowledgeGraph", "UnknownIdError", "Vocab",
    "compact", "deduplicate", "k_core", "load_atomic", "load_movielens", "load_table", "preprocess",
    "read_table", "summarize", "to_implicit",
]
