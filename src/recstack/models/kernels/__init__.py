"""Shared maths of the model families, with public names: graph propagation, dot-product and
sequence scoring, neighbour sparsification, the shared self-attention parameters, the
trie-constrained beam search.

No model lives here, and nothing here imports a family folder: every family imports from here
(or from `train/`), never from another family (tests/models/test_layering.py checks it).
"""
