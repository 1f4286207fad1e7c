"""RP3beta: popularity-penalised three-step random walk (Paudel et al., TiiS 2017; Christoffel et al., RecSys 2015).

    W[i, j] = (sum_u P_iu^alpha P_uj^alpha) / pop_j^beta,    score(u, j) = sum_{i in history(u)} W[i, j]

P_ui is the row-normalised binary user x item matrix and P_iu the row-normalised item x user
matrix, so W without the exponents is the probability of walking item -> user -> item; alpha
sharpens or flattens the transition probabilities and beta divides by the target item's
popularity to lift the long tail. Row i of W keeps its `n_neighbors` largest entries (ties:
lower item index) with W[i, i] = 0, as in Dacrema et al.'s reference implementation;
`normalize_similarity` re-normalises each kept row to sum to one.

Computed in float64 for blocks of items, stored as sparse float32; scoring is a sparse
product of the users' history rows, so new users work without refitting.

Defaults chosen on ml-100k validation NDCG@10 (all ratings positive, per-user random 8:1:1,
full ranking, history = train): alpha=0.9, beta=0.65, n_neighbors=200, normalize_similarity=True
-> 0.2464 (alpha 1.0 / beta 0.5: 0.2350; without row normalisation about 0.003 lower; grid alpha
0.5-1.5, beta 0-0.8, n_neighbors 50-300; Pop scores 0.1301 on the same split).
"""

from __future__ import annotations

from typing import Self

import numpy as np
import scipy.sparse as sp
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.topn import top_n_per_row
from recstack.models.protocol import ModelConfig, SaveLoad, ScoresFromHistory, check_fitted, gather_items
from recstack.train.options import FitOptions

# float64 cells per similarity block (128 MB; a few such temporaries live at once): bounds fit
# memory independently of the catalogue
_BLOCK_CELLS = 2**24


class RP3betaConfig(ModelConfig):
    alpha: PositiveFloat = 0.9
    beta: NonNegativeFloat = 0.65
    n_neighbors: PositiveInt = 200
    normalize_similarity: bool = True


def _row_normalised(matrix: sp.csr_matrix) -> sp.csr_matrix:
    degree = np.diff(matrix.indptr)
    out = matrix.astype(np.float64, copy=True)
    out.data /= np.repeat(np.maximum(degree, 1), degree)
    return out


class RP3beta(ScoresFromHistory, SaveLoad):
    """Item-item random-walk similarity with a popularity penalty."""

    Config = RP3betaConfig

    def __init__(self, config: RP3betaConfig | None = None) -> None:
        self.config = config or RP3betaConfig()

    def fit(self, train: Interactions, valid: Interactions | None = None, *,
            options: FitOptions | None = None) -> Self:
        cfg = self.config
        matrix = train.matrix()
        user_to_item = _row_normalised(matrix)
        item_to_user = _row_normalised(matrix.T.tocsr())
        if cfg.alpha != 1.0:
            user_to_item.data **= cfg.alpha
            item_to_user.data **= cfg.alpha
        n_items = matrix.shape[1]
        popularity = np.diff(matrix.tocsc().indptr).astype(np.float64)
        penalty = np.zeros(n_items)
        seen = popularity > 0
        penalty[seen] = popularity[seen] ** -cfg.beta
        block = max(1, _BLOCK_CELLS // max(n_items, 1))
        rows, cols, values = [], [], []
        for start in range(0, n_items, block):
            stop = min(start + block, n_items)
            walk = (item_to_user[start:stop] @ user_to_item).toarray() * penalty[None, :]
            walk[np.arange(stop - start), np.arange(start, stop)] = 0.0  # no self-loops
            r, c = top_n_per_row(walk, cfg.n_neighbors)
            rows.append(r + start)
            cols.append(c)
            values.append(walk[r, c])
        weights = sp.csr_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items)
        )
        if cfg.normalize_similarity:
            row_sums = np.asarray(weights.sum(axis=1)).ravel()
            weights.data /= np.repeat(np.where(row_sums > 0, row_sums, 1.0), np.diff(weights.indptr))
        self.similarity_ = weights.astype(np.float32)
        self.similarity_.sort_indices()
        return self

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "similarity_")
        if history.n_items != self.similarity_.shape[0]:
            raise RecstackError(f"RP3beta was fitted on {self.similarity_.shape[0]} items but history has "
                                f"{history.n_items}; score with the vocabularies of the split it was fitted on")
        rows = history.matrix()[np.asarray(users)]
        scores = np.asarray((rows @ self.similarity_).toarray(), dtype=np.float32)
        return gather_items(scores, items)
