"""Generative retrieval: item tokenizers (semantic IDs and other indexing schemes) and the models that decode them."""
