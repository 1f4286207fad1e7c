"""M2TRec (Shalaby et al., "M2TRec: Metadata-aware Multi-task Transformer for Large-scale and Cold-start
free Session-based Recommendations", RecSys 2022): item-ID free. An item is a learned function of its
metadata only, e_i = W [ g(genres_i) ; y(year_i) ; t(text_i) ] + b (mean category embedding, year-bucket
embedding, linear map of a fixed title vector: `text` "tfidf"/"minilm"/"none"); a Transformer encoder
reads the session's metadata representations (plus learned positions), s is the average pooling of
its outputs, and score(u, i) = <s_u, e_i> for every item, unseen ones included. Loss: CE over the items
+ category_weight * CE(C s + c, next item's categories), the genres of MovieLens as a uniform soft
target (the paper's single primary category with one softmax head).

Item side data arrives by `use_dataset(dataset)` (its `item_table`) or `set_item_table(item_ids,
table)`, before `fit` (which raises without it). Inferred (no authors' code): one linear layer maps
the concatenated fields to `embedding_size` and one encoder gives inputs and candidates; causal
attention with a running-mean pooling so every prefix is a training session in one pass; the item
softmax ranges over items with training events only (a cold item is never pushed down for being
cold); post-norm layers, 4x GELU feed-forward. Defaults, tuning and results: docs/models/m2trec.md.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Self, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveInt, confloat, model_validator

from recstack.data.dataset import Dataset
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.sequences import SequenceWindowFields
from recstack.models.kernels.side import rows_for_items
from recstack.models.neural import TorchRecommender, TrainingFields, module_arrays
from recstack.models.protocol import ModelConfig, ScoresFromHistory, check_fitted, check_trainable
from recstack.train.indexing import gather_rows
from recstack.train.options import FitOptions
from recstack.train.sequences import PAD, SequenceBatches, last_items


class M2TRecConfig(ModelConfig, TrainingFields, SequenceWindowFields):
    category_column: str = "genres"  # the multi-task target and an input field
    year_column: str | None = "year"  # None: no year field
    year_buckets: PositiveInt = 10  # quantile buckets of the catalogue's years (plus one for "missing")
    text: Literal["none", "tfidf", "minilm"] = "minilm"  # text field from `text_column` ("none": no text)
    text_column: str = "title"
    tfidf_dim: PositiveInt = 64
    cache_embeddings: bool = True  # keep encoded texts on disk (recstack's embeddings cache)
    field_size: PositiveInt = 32  # width of each metadata field's embedding before the concatenation
    embedding_size: PositiveInt = 64  # Transformer width = item representation width
    n_layers: PositiveInt = 2
    n_heads: PositiveInt = 2  # must divide embedding_size
    dropout: confloat(ge=0.0, lt=1.0) = 0.2
    category_weight: NonNegativeFloat = 1.0  # weight of the next-category loss (0: single task)
    max_seq_len: PositiveInt = 50
    batch_size: PositiveInt = 128  # sequences (users) per update
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    score_batch_size: PositiveInt = 256

    @model_validator(mode="after")
    def _consistent(self) -> "M2TRecConfig":
        if self.embedding_size % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide embedding_size ({self.embedding_size})")
        return self


# ---- metadata -> model inputs (numpy) -----------------------------------------------------------
def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value) < 0
    return isinstance(value, str) and not value.strip()


def _labels(value: Any) -> list[str]:
    """A multi-valued cell ("A|B", a list, or one value) -> its non-empty labels."""
    if isinstance(value, (list, tuple, np.ndarray)):
        parts = [str(v).strip() for v in value if not _missing(v)]
    elif _missing(value):
        parts = []
    else:
        parts = [part.strip() for part in str(value).split("|")]
    return [part for part in parts if part]


def category_matrix(column: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(n_items, n_categories) float32 rows that sum to 1 (uniform over the item's categories; all zero
    for an item without any) and the sorted category names."""
    per_item = [_labels(value) for value in column]
    names = sorted({label for labels in per_item for label in labels})
    index = {name: j for j, name in enumerate(names)}
    out = np.zeros((len(per_item), len(names)), dtype=np.float32)
    for row, labels in enumerate(per_item):
        for label in set(labels):
            out[row, index[label]] = 1.0
    counts = out.sum(axis=1, keepdims=True)
    return out / np.maximum(counts, 1.0), names


def year_bucket_index(column: Sequence[Any] | np.ndarray, n_buckets: int) -> np.ndarray:
    """int64 bucket per item: 0 for a missing year, else 1..n_buckets by quantiles of the known years."""
    values = np.array([np.nan if _missing(v) else float(v) for v in column], dtype=np.float64)
    known = ~np.isnan(values)
    out = np.zeros(len(values), dtype=np.int64)
    if known.any():
        edges = np.unique(np.quantile(values[known], np.linspace(0, 1, n_buckets + 1)[1:-1]))
        out[known] = 1 + np.searchsorted(edges, values[known], side="right")
    return out


# ---- network ------------------------------------------------------------------------------------
class _Net(torch.nn.Module):
    def __init__(self, categories: np.ndarray, years: np.ndarray, text: np.ndarray, n_year_buckets: int,
                 c: M2TRecConfig) -> None:
        super().__init__()
        d, f = c.embedding_size, c.field_size
        n_categories = categories.shape[1]
        self.register_buffer("categories", torch.from_numpy(categories), persistent=False)
        self.register_buffer("years", torch.from_numpy(years), persistent=False)
        self.register_buffer("text", torch.from_numpy(text), persistent=False)
        self.category_embedding = torch.nn.Linear(n_categories, f, bias=False)  # rows: category embeddings
        self.year_embedding = torch.nn.Embedding(n_year_buckets + 1, f) if n_year_buckets else None
        self.text_map = torch.nn.Linear(text.shape[1], f) if text.shape[1] else None
        n_fields = 1 + (self.year_embedding is not None) + (self.text_map is not None)
        self.project = torch.nn.Linear(n_fields * f, d)
        self.position = torch.nn.Embedding(c.max_seq_len, d)
        layer = torch.nn.TransformerEncoderLayer(d, c.n_heads, 4 * d, c.dropout, activation="gelu",
                                                 batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, c.n_layers, enable_nested_tensor=False)
        self.category_head = torch.nn.Linear(d, n_categories)
        self.n_heads, self.dropout = c.n_heads, c.dropout

    def items(self) -> torch.Tensor:
        """(n_items, d): every item's representation from its metadata alone."""
        fields = [self.category_embedding(self.categories)]
        if self.year_embedding is not None:
            fields.append(self.year_embedding(self.years))
        if self.text_map is not None:
            fields.append(self.text_map(self.text))
        return self.project(torch.cat(fields, dim=1))

    def forward(self, tokens: torch.Tensor, items: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, T) left-padded tokens -> session encodings (B, T, d): position t is the mean of the causal
        encoder outputs over the events up to t; (B, d) at the last slot with `last_only`."""
        batch, length = tokens.shape
        valid = tokens != PAD
        table = torch.cat([items.new_zeros(1, items.shape[1]), items])  # token 0 = padding
        # index_select's backward is deterministic; advanced indexing's accumulates repeated tokens
        # in a thread-dependent order (same-seed runs drifted by ~1e-7 on two threads)
        x = gather_rows(table, tokens) + self.position.weight[self.position.num_embeddings - length:]
        x = F.dropout(x, self.dropout, self.training) * valid.unsqueeze(-1)
        allowed = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        allowed = allowed.unsqueeze(0) & valid.unsqueeze(1)
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=tokens.device)  # padding sees itself
        mask = (~allowed).repeat_interleave(self.n_heads, dim=0)  # (B * heads, T, T), True = blocked
        out = self.encoder(x, mask=mask) * valid.unsqueeze(-1)
        counts = valid.cumsum(dim=1).clamp_min(1).unsqueeze(-1).to(out.dtype)
        if last_only:
            return out.sum(dim=1) / counts[:, -1]
        return out.cumsum(dim=1) / counts


def _score_blocks(net: _Net, users: np.ndarray, history: Interactions, items: np.ndarray | None,
                  max_seq_len: int, chunk: int) -> np.ndarray:
    n_items = net.categories.shape[0]
    if history.n_items != n_items:
        raise RecstackError(f"the history has {history.n_items} items but the model was fitted on {n_items}; "
                            "score with interactions that share the training item vocabulary")
    was_training = net.training
    net.eval()
    with torch.no_grad():
        table = net.items()
        vectors = table.to("cpu", torch.float32).numpy()
        users = np.asarray(users, dtype=np.int64)
        if items is not None:
            items = np.asarray(items, dtype=np.int64)
        width = n_items if items is None else items.shape[-1]
        out = np.empty((len(users), width), dtype=np.float32)
        for start in range(0, len(users), chunk):
            part = slice(start, start + chunk)
            tokens = last_items(history, users[part], max_seq_len)
            filled = np.flatnonzero((tokens != PAD).any(axis=0))
            tokens = tokens[:, filled[0]:] if len(filled) else tokens[:, -1:]
            session = net(torch.from_numpy(tokens).to(table.device), table, last_only=True)
            session = session.to("cpu", torch.float32).numpy()
            if items is None:
                np.matmul(session, vectors.T, out=out[part])
            elif items.ndim == 1:
                np.matmul(session, vectors[items].T, out=out[part])
            else:
                out[part] = np.einsum("bd,bcd->bc", session, vectors[items[part]])
    net.train(was_training)
    return out


class M2TRec(ScoresFromHistory, TorchRecommender):
    """Item-ID-free Transformer over item metadata; next-item and next-category heads."""

    Config = M2TRecConfig

    def __init__(self, config: M2TRecConfig | None = None) -> None:
        self.config = config or M2TRecConfig()
        self._item_ids: np.ndarray | None = None
        self._item_table: dict[str, np.ndarray] | None = None
        self._net: _Net | None = None

    # ---- side information ---------------------------------------------------------------------
    def set_item_table(self, item_ids: Sequence | np.ndarray, table: Mapping[str, Sequence | np.ndarray]) -> Self:
        """Item metadata, row r of every column for the external item id `item_ids[r]`."""
        ids = np.asarray(item_ids)
        columns = {name: np.asarray(column, dtype=object) for name, column in table.items()}
        bad = [name for name, column in columns.items() if column.ndim != 1 or len(column) != len(ids)]
        if ids.ndim != 1 or bad:
            raise RecstackError(f"M2TRec item table columns need one value per item id ({len(ids)}); "
                                f"column(s) {', '.join(map(repr, bad))} do not")
        c = self.config
        wanted = [c.category_column] + ([c.year_column] if c.year_column else []) + \
            ([c.text_column] if c.text != "none" else [])
        missing = [name for name in wanted if name not in columns]
        if missing:
            raise RecstackError(f"M2TRec needs item column(s) {', '.join(map(repr, missing))}, the table has "
                                f"{', '.join(map(repr, columns)) or 'none'}; set category_column / year_column "
                                "(None to skip) / text_column to the dataset's names")
        self._item_ids, self._item_table = ids, {name: columns[name] for name in wanted}
        return self

    def use_dataset(self, dataset: Dataset) -> Self:
        """Read item metadata from the dataset's item side table (recstack run calls this)."""
        if not dataset.item_table:
            raise RecstackError(f"M2TRec needs item metadata, but dataset {dataset.name!r} has no item side table; "
                                "load data with item attributes (e.g. ml-100k genres and years) or call "
                                "model.set_item_table(item_ids, {column: values})")
        return self.set_item_table(dataset.interactions.items.ids, dataset.item_table)

    def _features(self, train: Interactions) -> tuple[np.ndarray, list[str], np.ndarray, int, np.ndarray]:
        c = self.config
        if self._item_table is None:
            raise RecstackError(
                "M2TRec builds items from their metadata and has none: call model.use_dataset(dataset) before fit "
                "(a Dataset with an item side table, e.g. ml-100k; `recstack run` does this) or "
                "model.set_item_table(item_ids, {column: values})")
        rows = rows_for_items(self._item_ids, train.items.ids, model="M2TRec", what="metadata")
        table = {name: column[rows] for name, column in self._item_table.items()}
        categories, names = category_matrix(table[c.category_column])
        if not names:
            raise RecstackError(f"M2TRec found no categories in item column {c.category_column!r}; "
                                "point category_column at a categorical column (e.g. genres)")
        years = year_bucket_index(table[c.year_column], c.year_buckets) if c.year_column else \
            np.zeros(len(rows), dtype=np.int64)
        n_year = int(years.max()) if c.year_column else 0
        if c.text == "none":
            text = np.zeros((len(rows), 0), dtype=np.float32)
        else:
            from recstack.data.features import SentenceEncoder, TfidfSVDEncoder, encode_texts

            texts = ["" if _missing(v) else str(v) for v in table[c.text_column]]
            encoder = SentenceEncoder() if c.text == "minilm" else TfidfSVDEncoder(dim=c.tfidf_dim, seed=c.seed)
            text = encode_texts(texts, encoder, cache=c.cache_embeddings, progress=False).astype(np.float32)
        return categories, names, years, n_year, text

    # ---- training -----------------------------------------------------------------------------
    def fit(self, train: Interactions, valid: Interactions | None = None, *,
            options: FitOptions | None = None) -> Self:
        check_trainable("M2TRec", train)
        # encoded before the base seeds: a text encoder may draw from the global RNGs while loading
        self._inputs = self._features(train)
        self._net = None  # a network cached from an earlier fit
        try:
            return super().fit(train, valid, options=options)
        finally:
            del self._inputs

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        categories, _, years, n_year, text = self._inputs
        self._sequences = SequenceBatches(train, c.max_seq_len, c.batch_size, rng, **c.window_options())
        if len(self._sequences.users) == 0:
            raise RecstackError("M2TRec needs at least one user with two or more training events "
                                "(one to read, one to predict); check the filters and split")
        net = _Net(categories, years, text, n_year, c)
        # the item softmax ranges over items with training events; token -> its column in that range
        warm = np.flatnonzero(train.item_counts() > 0)
        column = np.full(train.n_items + 1, -1, dtype=np.int64)
        column[warm + 1] = np.arange(len(warm))
        self._warm, self._column = torch.from_numpy(warm), torch.from_numpy(column)
        return net

    def batches(self):
        for _, inputs, targets in self._sequences:
            yield inputs, targets

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        c = self.config
        inputs, targets = batch
        items = module.items()
        session = module(inputs, items)
        slots = targets != PAD
        s, positives = session[slots], targets[slots]  # (M, d), (M,) tokens
        logits = s @ items[self._warm.to(items.device)].T
        loss = F.cross_entropy(logits, self._column.to(items.device)[positives])
        if c.category_weight > 0:
            wanted = module.categories[positives - 1]  # (M, n_categories), rows sum to 1 or 0
            has = wanted.sum(dim=1) > 0
            if has.any():
                log_p = F.log_softmax(module.category_head(s[has]), dim=-1)
                loss = loss + c.category_weight * -(wanted[has] * log_p).sum(dim=1).mean()
        return loss

    def export(self, module: _Net) -> dict[str, Any]:
        categories, names, years, n_year, text = self._inputs
        return {"weights_": module_arrays(module), "categories_": categories, "category_names_": names,
                "years_": years, "n_year_buckets_": n_year, "text_vectors_": text}

    # ---- inference ----------------------------------------------------------------------------
    def network(self) -> _Net:
        """The fitted network (rebuilt from the saved arrays after `load`)."""
        check_fitted(self, "weights_", "categories_", "years_", "text_vectors_")
        if self._net is None:
            with torch.random.fork_rng(devices=[]):  # the throw-away initialisation leaves the global RNG alone
                net = _Net(np.asarray(self.categories_, dtype=np.float32), np.asarray(self.years_, dtype=np.int64),
                           np.asarray(self.text_vectors_, dtype=np.float32), int(self.n_year_buckets_), self.config)
            net.load_state_dict({key: torch.from_numpy(value) for key, value in self.weights_.items()})
            self._net = net.eval()
        return self._net

    def item_vectors(self) -> np.ndarray:
        """(n_items, embedding_size): each item's representation, built from its metadata only."""
        with torch.no_grad():
            return self.network().items().numpy().copy()

    def category_probabilities(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """(B, n_categories) softmax of the category head: the predicted categories of each user's next item
        (columns named by `category_names_`)."""
        net = self.network()
        tokens = torch.from_numpy(last_items(history, np.asarray(users, dtype=np.int64), self.config.max_seq_len))
        with torch.no_grad():
            session = net(tokens, net.items(), last_only=True)
            return torch.softmax(net.category_head(session), dim=-1).numpy()

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(self.network(), users, history, items, self.config.max_seq_len,
                             self.config.score_batch_size)
