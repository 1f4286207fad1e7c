"""Self-supervised two-tower retrieval (Yao et al., "Self-supervised Learning for Large-scale Item
Recommendations", CIKM 2021 / arXiv 2007.12865).

Item tower: the embeddings of an item's features -- its ID (own row, or a hash bucket), genres (mean
of the genre embeddings), release-year bucket, a linear map of its text vector -- concatenated, MLP,
L2-normalised: v_i. User tower: the user's ID embedding and the mean of v_j over the user's history,
concatenated, MLP, L2-normalised: q_u. score(u, i) = <q_u, v_i> (cosine), a dot product.

Main loss: batch softmax over the in-batch items with the logQ correction of Yi et al. (RecSys
2019), logit(b, c) = <q_b, v_c> / tau - log p(i_c), p an item's share of the training pairs; loss
-mean_b log softmax_c(logit(b, .))_b, other columns holding row b's own item masked (accidental hits).
In training the history mean of a pair's user leaves the pair's item out (no label in the input).
SSL loss on the item tower, over items drawn uniformly from the catalogue (not by popularity): two
views mask complementary halves of the feature set -- correlated feature masking (CFM: a random seed
feature and the n/2 - 1 features of highest mutual information with it, MI measured on the items with
training events) or random feature masking (RFM) -- then feature dropout on the multi-valent genres;
InfoNCE -mean_i log exp(<z_i, z'_i>/tau_s) / sum_j exp(<z_i, z'_j>/tau_s) through the shared tower.
Loss = main + ssl_weight * ssl; ssl_weight 0 is the plain two-tower (with the same random draws).

Cold items (no training events) are scored from their features: with `item_id: oov` their ID field
is zero, which is what a masked ID looks like to the tower; with `hash` it is their bucket's row.
Choices and deviations: docs/models/ssl_two_tower.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator

from recstack.data.interactions import Interactions
from recstack.data.semantic_tokens import hash_buckets  # the CTR features' stable hash
from recstack.errors import RecstackError
from recstack.models.kernels.scoring import dot_scores, user_vectors
from recstack.models.kernels.side import ItemModalityInput, ModalityFields
from recstack.models.neural import TorchRecommender, TrainingFields, module_arrays
from recstack.models.protocol import ModelConfig, ScoresTrainedUsers, check_fitted, users_with_history
from recstack.train.losses import info_nce_loss
from recstack.train.sampling import EpochPairs

FEATURES = ("id", "genres", "year", "text")
TEXT_CODE_BITS = 4  # the text vector enters the MI table as the signs of its top 4 principal components


class SSLTwoTowerConfig(ModelConfig, TrainingFields, ModalityFields):
    features: list[Literal["id", "genres", "year", "text"]] = list(FEATURES)  # the item tower's inputs
    item_id: Literal["oov", "hash"] = "oov"  # oov: own row, zero for items without training events
    hash_buckets: PositiveInt = 20_000  # rows of the hashed ID table (item_id: hash)
    year_buckets: PositiveInt = 10  # quantile buckets of the release year
    text_encoder: str = "minilm"  # "minilm", "tfidf" or a local sentence-transformers directory
    field_size: PositiveInt = 32  # width of each feature's embedding
    mlp_hidden: PositiveInt = 256
    embedding_size: PositiveInt = 64  # the towers' (normalised) output
    temperature: PositiveFloat = 0.1  # tau of the main batch softmax (0.05: lower valid NDCG@10 on ml-100k)
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    ssl_weight: NonNegativeFloat = 0.3  # alpha; 0 = plain two-tower
    ssl_temperature: PositiveFloat = 0.1
    masking: Literal["correlated", "random"] = "correlated"  # CFM or the RFM ablation
    feature_dropout: float = Field(0.1, ge=0.0, lt=1.0)  # per genre value, after masking (SSL views only)
    ssl_batch_size: PositiveInt = 512  # catalogue items per step for the SSL loss
    learning_rate: PositiveFloat = 1e-3
    batch_size: PositiveInt = 1024
    epochs: PositiveInt = 100  # a maximum: early stopping on validation NDCG@10 ends training before

    @field_validator("features")
    @classmethod
    def _distinct_features(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"name at least one item feature of {', '.join(FEATURES)}")
        repeated = sorted({f for f in value if value.count(f) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return value

    @property
    def modalities(self) -> list[str]:
        """The item modalities `use_dataset` builds (recstack.data.modalities)."""
        wanted = ["structure"] if {"genres", "year"} & set(self.features) else []
        return wanted + (["text"] if "text" in self.features else [])


# ---- item features and the masks of the SSL views ----------------------------------------------------
@dataclass
class ItemFeatures:
    """The item tower's inputs, row i for item index i. `names` are the maskable features (each genre
    is one, as a value of the multi-valent genre field), `codes` their discrete values for the MI
    table; `columns[field]` is the slice of `names` a field of `order` owns."""

    order: list[str]
    id_rows: np.ndarray | None = None  # (n_items,) int64, -1 = no ID row
    n_id_rows: int = 0
    genre_flags: np.ndarray | None = None  # (n_items, G) float32
    year_bucket: np.ndarray | None = None  # (n_items,) int64
    text: np.ndarray | None = None  # (n_items, T) float32
    names: list[str] = field(default_factory=list)
    columns: dict[str, slice] = field(default_factory=dict)
    codes: np.ndarray | None = None  # (n_items, len(names)) int64


def text_codes(vectors: np.ndarray, fit_rows: np.ndarray, bits: int = TEXT_CODE_BITS) -> np.ndarray:
    """A discrete code per row for the MI table: the sign pattern of the top `bits` principal
    components (fitted on `fit_rows`), 2**bits codes."""
    base = vectors[fit_rows] if fit_rows.any() else vectors
    mean = base.mean(axis=0)
    _, _, vt = np.linalg.svd(base - mean, full_matrices=False)
    signs = ((vectors - mean) @ vt[:bits].T) > 0
    return (signs * (1 << np.arange(signs.shape[1]))).sum(axis=1).astype(np.int64)


def mutual_information(codes: np.ndarray) -> np.ndarray:
    """(F, F) mutual information (nats) between the discrete columns of `codes` (n, F), from their
    empirical joint distribution over the n rows; the diagonal holds each column's entropy."""
    codes = np.asarray(codes)
    n, n_features = codes.shape
    dense = np.empty(codes.shape, dtype=np.int64)
    for f in range(n_features):
        dense[:, f] = np.unique(codes[:, f], return_inverse=True)[1].ravel()
    sizes = dense.max(axis=0) + 1 if n else np.ones(n_features, dtype=np.int64)
    logs = [np.log(np.bincount(dense[:, f]) / n) for f in range(n_features)]
    mi = np.zeros((n_features, n_features))
    for a in range(n_features):
        for b in range(a, n_features):
            cells, counts = np.unique(dense[:, a] * sizes[b] + dense[:, b], return_counts=True)
            joint = counts / n
            mi[a, b] = mi[b, a] = max(0.0, float(np.sum(joint * (np.log(joint) - logs[a][cells // sizes[b]]
                                                                 - logs[b][cells % sizes[b]]))))
    return mi


def correlated_masks(mi: np.ndarray) -> np.ndarray:
    """CFM's groups: row s masks the seed feature s and the n//2 - 1 others of highest MI with it (ties
    by feature order); the other view masks the complement."""
    n_features = len(mi)
    table = np.zeros((n_features, n_features), dtype=bool)
    for seed in range(n_features):
        others = [f for f in np.argsort(-mi[seed], kind="stable") if f != seed]
        table[seed, [seed, *others[:n_features // 2 - 1]]] = True
    return table


def random_masks(n: int, n_features: int, rng: np.random.Generator) -> np.ndarray:
    """RFM: n rows, each masking a uniformly random n_features // 2 of the features."""
    order = np.argsort(rng.random((n, n_features)), axis=1)
    masks = np.zeros((n, n_features), dtype=bool)
    np.put_along_axis(masks, order[:, :n_features // 2], True, axis=1)
    return masks


# ---- losses ------------------------------------------------------------------------------------------
def batch_softmax_loss(queries: torch.Tensor, keys: torch.Tensor, temperature: float,
                       log_q: torch.Tensor | None = None, items: torch.Tensor | None = None) -> torch.Tensor:
    """-mean_b log softmax_c(<q_b, k_c> / temperature - log_q_c)_b: row b's positive is key b, the
    other keys of the batch are its negatives (Yi et al. 2019). `items` (B,): keys holding row b's own
    item elsewhere in the batch are dropped from its softmax (accidental hits)."""
    logits = queries @ keys.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)  # sampling-bias correction: frequent items are frequent negatives
    if items is not None:
        hits = items.unsqueeze(0) == items.unsqueeze(1)
        hits.fill_diagonal_(False)
        logits = logits.masked_fill(hits, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


# ---- network -----------------------------------------------------------------------------------------
def _mlp(n_in: int, hidden: int, out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, out))


class _Towers(torch.nn.Module):
    def __init__(self, inputs: ItemFeatures, n_users: int, log_q: np.ndarray, c: SSLTwoTowerConfig) -> None:
        super().__init__()
        self.order, self.columns, size = inputs.order, inputs.columns, c.field_size
        if inputs.id_rows is not None:
            self.item_id = torch.nn.Embedding(inputs.n_id_rows, size)
            self.register_buffer("id_rows", torch.from_numpy(inputs.id_rows), persistent=False)
        if inputs.genre_flags is not None:
            self.genre = torch.nn.Embedding(inputs.genre_flags.shape[1], size)
            self.register_buffer("genre_flags", torch.from_numpy(inputs.genre_flags), persistent=False)
        if inputs.year_bucket is not None:
            self.year = torch.nn.Embedding(c.year_buckets, size)
            self.register_buffer("year_bucket", torch.from_numpy(inputs.year_bucket), persistent=False)
        if inputs.text is not None:
            self.text = torch.nn.Linear(inputs.text.shape[1], size)
            self.register_buffer("text_inputs", torch.from_numpy(inputs.text), persistent=False)
        self.item_mlp = _mlp(len(self.order) * size, c.mlp_hidden, c.embedding_size)
        self.user = torch.nn.Embedding(n_users, c.embedding_size)
        self.user_mlp = _mlp(2 * c.embedding_size, c.mlp_hidden, c.embedding_size)
        for module in self.modules():
            if isinstance(module, torch.nn.Embedding):
                torch.nn.init.normal_(module.weight, std=0.1)
        self.register_buffer("log_q", torch.from_numpy(log_q), persistent=False)

    def items(self, index: torch.Tensor, keep: torch.Tensor | None = None, dropout: float = 0.0) -> torch.Tensor:
        """v for item indices (N,); `keep` (N, n_features) zeroes masked features (an SSL view),
        `dropout` drops genre values at random."""
        parts = []
        for name in self.order:
            kept = None if keep is None else keep[:, self.columns[name]]
            if name == "genres":
                flags = self.genre_flags[index] if kept is None else self.genre_flags[index] * kept
                if dropout > 0:
                    flags = flags * (torch.rand_like(flags) >= dropout)
                parts.append(flags @ self.genre.weight / flags.sum(1, keepdim=True).clamp(min=1.0))
                continue
            if name == "id":
                rows = self.id_rows[index]
                value = self.item_id(rows.clamp(min=0)) * (rows >= 0).unsqueeze(1)  # no row: a zero field
            elif name == "year":
                value = self.year(self.year_bucket[index])
            else:
                value = self.text(self.text_inputs[index])
            parts.append(value if kept is None else value * kept)
        return F.normalize(self.item_mlp(torch.cat(parts, dim=1)), dim=-1)

    def users(self, users: torch.Tensor, history_mean: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.user_mlp(torch.cat([self.user(users), history_mean], dim=1)), dim=-1)


# ---- the recommender ---------------------------------------------------------------------------------
class SSLTwoTower(ItemModalityInput, ScoresTrainedUsers, TorchRecommender):
    """Two towers over item features, batch softmax with logQ correction, CFM/RFM + InfoNCE on items."""

    Config = SSLTwoTowerConfig

    # ---- inputs ---------------------------------------------------------------------------------------
    def item_features(self, train: Interactions) -> ItemFeatures:
        """The configured features aligned with `train`'s items (modalities from `use_dataset`)."""
        c = self.config
        found = self.modality_features(train, who="ssl-two-tower")
        out = ItemFeatures(order=list(c.features))
        codes = []
        trained = train.item_counts() > 0
        columns = list((self._modalities or {}).get("structure").provenance.get("columns", [])) \
            if "structure" in found else []
        for name in c.features:
            start = len(out.names)
            if name == "id":
                if c.item_id == "hash":
                    external = map(str, np.asarray(train.items.ids).tolist())
                    out.id_rows, out.n_id_rows = hash_buckets(external, c.hash_buckets), c.hash_buckets
                else:
                    out.id_rows = np.where(trained, np.arange(train.n_items), -1).astype(np.int64)
                    out.n_id_rows = max(train.n_items, 1)
                out.names.append("id")
                codes.append(np.where(out.id_rows >= 0, out.id_rows, -1 - np.arange(train.n_items))[:, None])
            elif name == "genres":
                picked = [j for j, col in enumerate(columns) if col.startswith("genre:")]
                if not picked:
                    raise RecstackError(self._missing("genres", "a genres column (e.g. 'Comedy|Drama')", columns))
                out.genre_flags = np.ascontiguousarray(found["structure"][:, picked], dtype=np.float32)
                out.names += [columns[j] for j in picked]
                codes.append((out.genre_flags > 0).astype(np.int64))
            elif name == "year":
                if "year" not in columns:
                    raise RecstackError(self._missing("year", "a year column", columns))
                years = found["structure"][:, columns.index("year")].astype(np.float64)
                edges = np.unique(np.quantile(years, np.linspace(0, 1, c.year_buckets + 1)[1:-1]))
                out.year_bucket = np.searchsorted(edges, years, side="right").astype(np.int64)
                out.names.append("year")
                codes.append(out.year_bucket[:, None])
            else:
                out.text = np.ascontiguousarray(found["text"], dtype=np.float32)
                out.names.append("text")
                codes.append(text_codes(out.text, trained)[:, None])
            out.columns[name] = slice(start, len(out.names))
        out.codes = np.concatenate(codes, axis=1)
        return out

    def _missing(self, feature: str, what: str, columns: list[str]) -> str:
        return (f"ssl-two-tower feature {feature!r} needs {what} in the item table (the structure modality), "
                f"which has {', '.join(columns) or 'no such columns'}; drop {feature!r} from `features` "
                f"(now {self.config.features})")

    # ---- training -------------------------------------------------------------------------------------
    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Towers:
        c = self.config
        inputs = self.item_features(train)
        n_features = len(inputs.names)
        if c.ssl_weight > 0 and n_features < 2:
            raise RecstackError(f"ssl-two-tower's SSL views mask complementary halves of the item features, and "
                                f"only {inputs.names} is there: add features (e.g. genres, year, text) or set "
                                "ssl_weight: 0 (the plain two-tower)")
        matrix = train.matrix()
        self._matrix = matrix
        self._pairs = EpochPairs.from_matrix(matrix, c.batch_size, rng)
        self._ssl_rng = rng.spawn(1)[0]  # spawned whatever ssl_weight is: the same pairs with and without SSL
        if c.masking == "correlated":
            trained = train.item_counts() > 0
            self._mask_table = correlated_masks(mutual_information(inputs.codes[trained] if trained.any()
                                                                   else inputs.codes))
        self._n_features = n_features
        frequency = np.asarray(matrix.sum(axis=0)).ravel()
        log_q = np.log(np.maximum(frequency, 1.0) / max(matrix.nnz, 1)).astype(np.float32)
        self._untrained_users = train.user_counts() == 0
        return _Towers(inputs, train.n_users, log_q, c)

    def ssl_masks(self, n: int) -> np.ndarray:
        """(n, n_features) bool: the features the first view masks (the second masks the rest)."""
        if self.config.masking == "random":
            return random_masks(n, self._n_features, self._ssl_rng)
        return self._mask_table[self._ssl_rng.integers(0, self._n_features, n)]

    def batches(self):
        c, n_items = self.config, self._matrix.shape[1]
        for _, users, pos in self._pairs.indexed():
            rows = self._matrix[users]
            # the towers run once per distinct item of the batch: the histories and the positives
            items, inverse = np.unique(np.concatenate([rows.indices, pos]), return_inverse=True)
            inverse = inverse.ravel()
            counts = np.diff(rows.indptr)
            batch = (users, pos, items, np.repeat(np.arange(len(users)), counts), inverse[:rows.nnz], counts,
                     inverse[rows.nnz:])
            if c.ssl_weight > 0:
                ssl_items = self._ssl_rng.integers(0, n_items, c.ssl_batch_size)  # uniform over the catalogue
                batch += (ssl_items, (~self.ssl_masks(c.ssl_batch_size)).astype(np.float32))
            yield batch

    def batch_loss(self, module: _Towers, batch) -> torch.Tensor:
        c = self.config
        users, pos, items, hist_user, hist_col, counts, pos_col = batch[:7]
        vectors = module.items(items)
        positives = vectors[pos_col]
        # the history sums as one sparse (B, M) @ (M, d) product: 4x faster than gathering the rows
        history = torch.sparse_coo_tensor(torch.stack([hist_user, hist_col]),
                                          torch.ones(len(hist_col), dtype=vectors.dtype, device=vectors.device),
                                          (len(users), len(items)), check_invariants=True)
        sums = torch.sparse.mm(history, vectors)
        # leave the pair's own item out of its user's history: the label must not be an input
        others = (counts - 1).clamp(min=1).to(vectors.dtype).unsqueeze(1)
        queries = module.users(users, (sums - positives) / others)
        loss = batch_softmax_loss(queries, positives, c.temperature, module.log_q[pos] if c.logq_correction else None,
                                  pos if c.remove_accidental_hits else None)
        if c.ssl_weight > 0:
            ssl_items, keep = batch[7:]
            first = module.items(ssl_items, keep, c.feature_dropout)
            second = module.items(ssl_items, 1.0 - keep, c.feature_dropout)
            loss = loss + c.ssl_weight * info_nce_loss(first, second, c.ssl_temperature)
        return loss

    def export(self, module: _Towers) -> dict[str, Any]:
        with torch.no_grad():
            index = torch.arange(self._matrix.shape[1], device=module.log_q.device)
            item_factors = module.items(index).to("cpu", torch.float32).numpy().copy()
        embedding = module.user.weight.detach().to("cpu", torch.float32).numpy().copy()
        embedding[self._untrained_users] = 0.0  # never trained: an unknown user's zero row
        return {"item_factors_": item_factors,
                "user_tower_": {"embedding": embedding, **module_arrays(module.user_mlp)}}

    # ---- scoring --------------------------------------------------------------------------------------
    def user_queries(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """q_u from the user's ID row (zero beyond the training users) and the mean item vector of
        the history given, so history added after fit (validation events, new users) counts."""
        check_fitted(self, "item_factors_", "user_tower_")
        users = np.asarray(users, dtype=np.int64)
        items = self.item_factors_
        if history.n_items != len(items):
            raise RecstackError(f"ssl-two-tower was fitted on {len(items)} items but the history has "
                                f"{history.n_items}; score with a history over the training item vocabulary")
        inside = (users >= 0) & (users < history.n_users)
        mean = np.zeros((len(users), items.shape[1]), dtype=np.float32)
        rows = history.matrix()[users[inside]]
        counts = np.maximum(np.diff(rows.indptr), 1).astype(np.float32)
        mean[inside] = (rows @ items) / counts[:, None]
        tower = self.user_tower_
        x = np.concatenate([user_vectors(users, tower["embedding"]), mean], axis=1)
        hidden = np.maximum(x @ tower["0.weight"].T + tower["0.bias"], 0.0)
        out = hidden @ tower["2.weight"].T + tower["2.bias"]
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def item_vectors(self) -> tuple[np.ndarray, None]:
        check_fitted(self, "item_factors_")
        return np.asarray(self.item_factors_, dtype=np.float32), None

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        queries = self.user_queries(users, history)
        return dot_scores(np.arange(len(queries)), items, queries, self.item_factors_)

    def can_score(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        # a trained ID row or a history to average: either makes the query depend on the user
        return super().can_score(users, history) | users_with_history(users, history)
