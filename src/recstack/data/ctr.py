"""CTR rows and their features: labels, a random row split, and train-only feature vocabularies.

The context-aware protocol RecBole uses for CTR models: every rated (user, item) pair is one row,
labelled 1 when its rating is >= `threshold` (4 on MovieLens) and 0 otherwise, and the rows are
split at random 8:1:1 (not per user). Features come from the dataset's user and item tables plus
the `user_id` / `item_id` fields themselves:

- `categorical`: one id per distinct value;
- `numeric`: `transform="normalise"` (one embedding scaled by the standardised value, as the CTR
  papers embed numeric fields) or `"bucketise"` (train quantile buckets, then categorical);
- `multi`: a multi-valued field (genres, `sep`-separated), mean-pooled over its values;
- `categorical` with `hash_buckets=N`: the value (the external id for `user_id`/`item_id`) goes
  through a stable 64-bit hash into one of N buckets: no vocabulary and no OOV, unseen values get a
  bucket too, and unrelated values collide (the random-hashing baseline of industrial rankers);
- `semantic_id`: an item's semantic ID (L codes from a residual quantiser over its content, handed
  in as an integer array by the caller: `codes={name: (n_items, L)}`, or an item-table column of
  code sequences) turned into tokens, `unigram`, `bigram`, `prefix` or `spm` pieces
  (`recstack.data.semantic_tokens`, Singh et al., RecSys 2024), a multi-valued field of them,
  summed (the paper's pooling) or averaged.

Vocabularies, normalisation statistics, bucket edges and SPM pieces are built from the users and
items that appear in the *training* rows only; a value not seen there maps to its field's OOV id, and
`CTRFeatures.oov_counts` counts the rows that hit one. Features of a row depend on its user and
item only (MovieLens has no context columns), so they are encoded once per user and per item and
gathered per batch: `rows(users, items)` -> `index (N, F, L)` int64 ids into one shared id space
(0 = padding) and `weight (N, F, L)` float32; a field's vector is `sum_l weight * E[index]`.

Sequence fields (`kind: sequence`, for behaviour models such as DIN or DiffuMIN): the user's recent items.
For a row (user u, item i, time t) the field holds the items of u's *training* rows strictly before
it in (time, original row order), the latest `max_len` of them (only those labelled 1 with
`positive_only`), as ids of the `item_id` field's vocabulary, so that a model shares the item
embedding between the target and the behaviours. Only training rows are read, so no validation or
test row's item or label reaches any row's features. Each user's training timeline is stored once
(`SequenceField`) and a batch's sequences are cut from it with `searchsorted`; a row without a
position (`rank` None, e.g. a (user, candidate) pair of a full ranking) sees the user's latest
`max_len` training items. `max_len` is capped at `MAX_SEQUENCE_LEN`.

`make_ctr_split(..., cold_items=s)` holds a share s of the items out of training entirely (their rows
go to validation and test), the cold-start setting in which semantic IDs are meant to help.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np

from recstack.data.dataset import Dataset
from recstack.data.semantic_tokens import TOKEN_SCHEMES, hash_buckets, parse_codes, semantic_tokens
from recstack.errors import RecstackError

ID_FIELDS = ("user_id", "item_id")
# the longest sequence field: a (rows, max_len) int64 block per batch must stay small (2,048 rows x 1,000
# ids is 16 MB, its embeddings 128 MB at size 16); behaviour models beyond that search the history first
MAX_SEQUENCE_LEN = 1000


class FeatureError(RecstackError, ValueError):
    """A feature specification or a label column the data cannot satisfy (names the field)."""


@dataclass(frozen=True)
class FieldSpec:
    """One feature field. `table` None: looked up in the user table, then the item table; `column`
    None: the column (or id) named `name` (set it to use one column twice, e.g. item_id hashed)."""

    name: str
    kind: Literal["categorical", "numeric", "multi", "semantic_id", "sequence"] = "categorical"
    table: Literal["user", "item"] | None = None
    transform: Literal["normalise", "bucketise"] = "normalise"  # numeric fields only
    n_buckets: int = 10
    sep: str = "|"  # multi-valued fields only
    column: str | None = None
    hash_buckets: int | None = None  # categorical only: hash into this many buckets instead of a vocabulary
    hash_seed: int = 0
    tokens: Literal["unigram", "bigram", "prefix", "spm"] = "prefix"  # semantic_id only
    spm_vocab: int = 1000  # semantic_id with tokens="spm": pieces, alphabet included
    pooling: Literal["sum", "mean"] = "sum"  # semantic_id only
    max_len: int = 50  # sequence only: the latest max_len training items before the row
    positive_only: bool = False  # sequence only: only the training rows labelled 1

    @property
    def source(self) -> str:
        return self.column or self.name


def labels_from_ratings(values: np.ndarray | None, threshold: float, name: str = "rating") -> np.ndarray:
    """RecBole's context-aware labels: 1.0 where value >= threshold, else 0.0 (float32)."""
    if values is None:
        raise FeatureError(f"label: the data has no {name} values to threshold; CTR needs explicit ratings "
                           "(a dataset with a value column)")
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise FeatureError(f"label: the {name} column has missing or infinite values")
    label = (values >= threshold).astype(np.float32)
    positive = int(label.sum())
    if positive == 0 or positive == len(label):
        side = "all below" if positive == 0 else "all at or above"
        raise FeatureError(f"label: threshold {threshold} does not split the {name} column (its values, "
                           f"{values.min():g} to {values.max():g}, are {side} it); choose a threshold inside that range")
    return label


def random_row_split(n: int, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train / valid / test, a global random split by `ratios` (sorted within each part)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    if len(ratios) != 3 or (ratios < 0).any() or ratios.sum() <= 0:
        raise FeatureError(f"split ratios must be three non-negative numbers, got {list(ratios)}")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.floor(np.cumsum(ratios / ratios.sum()) * n).astype(np.int64)
    bounds[-1] = n
    train, valid, test = np.split(order, bounds[:2])
    return np.sort(train), np.sort(valid), np.sort(test)


def item_cold_split(items: np.ndarray, ratios: Sequence[float] = (0.8, 0.1, 0.1), cold_share: float = 0.1,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train / valid / test with a share of the items held out of training entirely.

    `round(cold_share * items with rows)` items are drawn at random (seeded, uniformly: not by
    popularity); every row of theirs goes to validation or test, split between the two by
    `ratios[1]:ratios[2]`; the other items' rows are split by `ratios` as `random_row_split` does. The
    held-out items are new at test time, as fresh uploads are in the paper's setting: only their
    content (a semantic ID, a hashed bucket) can say anything about them."""
    ratios = np.asarray(ratios, dtype=np.float64)
    if not 0.0 <= cold_share < 1.0:
        raise FeatureError(f"cold_items must be a share in [0, 1), got {cold_share}")
    if len(ratios) != 3 or (ratios < 0).any() or ratios[1] + ratios[2] <= 0:
        raise FeatureError(f"cold_items needs validation or test rows to put the held-out items' rows in; "
                           f"ratios are {list(ratios)}")
    items = np.asarray(items)
    present = np.unique(items)
    cold = np.random.default_rng([seed, 7]).choice(present, int(round(cold_share * len(present))), replace=False)
    is_cold = np.isin(items, cold)
    warm_rows, cold_rows = np.flatnonzero(~is_cold), np.flatnonzero(is_cold)
    train, valid, test = random_row_split(len(warm_rows), ratios, seed)
    _, cold_valid, cold_test = random_row_split(len(cold_rows), (0.0, ratios[1], ratios[2]), seed + 1)
    return (np.sort(warm_rows[train]), np.sort(np.concatenate([warm_rows[valid], cold_rows[cold_valid]])),
            np.sort(np.concatenate([warm_rows[test], cold_rows[cold_test]])))


# ---- one fitted field -----------------------------------------------------------------------------

@dataclass
class _Encoded:
    """A field encoded per entity: ids (n, L) (0 = padding), weights (n, L), OOV flag (n,)."""

    index: np.ndarray
    weight: np.ndarray
    oov: np.ndarray


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value)


def _numeric(spec: FieldSpec, column: np.ndarray) -> np.ndarray:
    try:
        return np.asarray([np.nan if _is_missing(v) else float(v) for v in column], dtype=np.float64) \
            if column.dtype == object else column.astype(np.float64)
    except (TypeError, ValueError):
        bad = next(v for v in column if not _is_missing(v) and not _floatable(v))
        raise FeatureError(f"feature {spec.name!r} is declared numeric but holds text (e.g. {bad!r}); declare it "
                           "kind: categorical, or clean the column") from None


def _floatable(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _tokens(spec: FieldSpec, column: np.ndarray) -> list[list[str]]:
    if spec.kind == "multi":
        return [[] if _is_missing(v) else [t for t in str(v).split(spec.sep) if t] for v in column]
    return [["" if _is_missing(v) else str(v)] for v in column]


def _encode_tokens(tokens: list[list[str]], seen: np.ndarray, offset: int, pooling: str = "mean"
                   ) -> tuple[_Encoded, int, int]:
    """Token lists -> ids from `offset` (the field's OOV id) + 1 over the tokens of `seen` entities.
    Returns the encoding, the ids used and the vocabulary size."""
    n = len(tokens)
    vocab = sorted({t for row, keep in zip(tokens, seen) if keep for t in row})
    lookup = {t: offset + 1 + i for i, t in enumerate(vocab)}  # offset itself is the field's OOV id
    width = max(1, max((len(row) for row in tokens), default=1))
    index = np.zeros((n, width), dtype=np.int64)
    weight = np.zeros((n, width), dtype=np.float32)
    oov = np.zeros(n, dtype=bool)
    for row, values in enumerate(tokens):
        ids = [lookup.get(t, offset) for t in values] or [offset]  # no value at all: OOV as well
        oov[row] = offset in ids
        index[row, :len(ids)] = ids
        # mean pooling (a categorical field: weight 1); sum pooling keeps each token's full weight
        weight[row, :len(ids)] = 1.0 if pooling == "sum" else 1.0 / len(ids)
    return _Encoded(index, weight, oov), len(vocab) + 1, len(vocab)


def _hashed(spec: FieldSpec, column: np.ndarray, seen: np.ndarray, offset: int) -> tuple[_Encoded, int, dict]:
    """`hash_buckets` ids from `offset`: no vocabulary, so nothing is OOV and nothing is fitted."""
    values = ["" if _is_missing(v) else str(v) for v in column]
    bucket = hash_buckets(values, spec.hash_buckets, spec.hash_seed)
    index = (offset + bucket)[:, None]
    train_values = {v for v, keep in zip(values, seen) if keep}
    distinct = sorted(set(values))
    of_distinct = hash_buckets(distinct, spec.hash_buckets, spec.hash_seed)
    # distinct values that share their bucket with another value: what random hashing costs
    shared = np.bincount(of_distinct, minlength=spec.hash_buckets)[of_distinct] > 1
    described = {"kind": "categorical", "hash_buckets": spec.hash_buckets, "hash_seed": spec.hash_seed,
                 "values": len(distinct), "training_values": len(train_values),
                 "training_buckets": int(len(np.unique(bucket[seen]))), "values_in_shared_buckets": int(shared.sum())}
    return _Encoded(index, np.ones((len(values), 1), np.float32), np.zeros(len(values), bool)), \
        spec.hash_buckets, described


def _semantic(spec: FieldSpec, codes: list[list[int]], counts: np.ndarray, offset: int) -> tuple[_Encoded, int, dict]:
    """Semantic-ID tokens of every item; vocabulary (and SPM pieces) from the items of training rows."""
    tokens, described = semantic_tokens(codes, spec.tokens, train_weight=counts, spm_vocab=spec.spm_vocab)
    seen = counts > 0
    encoded, used, vocabulary = _encode_tokens(tokens, seen, offset, spec.pooling)
    lengths = [len(c) for c in codes]
    unseen = ~seen
    # an unseen item usually shares its coarse tokens with training items and misses its finest one
    return encoded, used, {"kind": "semantic_id", "tokens": spec.tokens, "pooling": spec.pooling,
                           "vocabulary": vocabulary, "levels": max(lengths, default=0),
                           "distinct_ids": len({tuple(c) for c in codes}),
                           "unseen_items": int(unseen.sum()),
                           "unseen_items_with_an_oov_token": int((encoded.oov & unseen).sum()),
                           **({"spm_vocab": spec.spm_vocab, **described} if spec.tokens == "spm" else {})}


def _fit_encode(spec: FieldSpec, column, seen: np.ndarray, offset: int,
                counts: np.ndarray | None = None) -> tuple[_Encoded, int, dict]:
    """Encode `column` (one value per entity) with ids from `offset`; statistics from `seen` entities only
    (`counts`: the entities' training rows, which weigh SPM pieces). Returns the encoding, the number of
    ids used and the field's description."""
    n = len(column)
    if spec.kind == "semantic_id":
        return _semantic(spec, column, seen.astype(np.int64) if counts is None else counts, offset)
    if spec.hash_buckets is not None:
        return _hashed(spec, column, seen, offset)
    if spec.kind == "numeric":
        x = _numeric(spec, column)
        train_values = x[seen & np.isfinite(x)]
        if len(train_values) == 0:
            raise FeatureError(f"feature {spec.name!r} has no numeric value among the training rows")
        if spec.transform == "normalise":
            mean, std = float(train_values.mean()), float(train_values.std()) or 1.0
            finite = np.isfinite(x)
            weight = np.where(finite, (x - mean) / std, 0.0).astype(np.float32)[:, None]
            index = np.full((n, 1), offset, dtype=np.int64)
            return _Encoded(index, weight, ~finite), 1, {"kind": "numeric", "transform": "normalise",
                                                           "mean": mean, "std": std}
        edges = np.unique(np.quantile(train_values, np.linspace(0, 1, spec.n_buckets + 1)[1:-1]))
        finite = np.isfinite(x)
        bucket = np.searchsorted(edges, np.where(finite, x, 0.0), side="right")
        index = np.where(finite, offset + 1 + bucket, offset)[:, None].astype(np.int64)
        return _Encoded(index, np.ones((n, 1), np.float32), ~finite), len(edges) + 2, {
            "kind": "numeric", "transform": "bucketise", "edges": edges.tolist()}
    encoded, used, vocabulary = _encode_tokens(_tokens(spec, column), seen, offset)
    return encoded, used, {"kind": spec.kind, "vocabulary": vocabulary}


def _stack(parts: list[_Encoded], n: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    index = np.zeros((n, len(parts), width), dtype=np.int64)
    weight = np.zeros((n, len(parts), width), dtype=np.float32)
    for f, part in enumerate(parts):
        index[:, f, :part.index.shape[1]] = part.index
        weight[:, f, :part.weight.shape[1]] = part.weight
    oov = np.stack([p.oov for p in parts], axis=1) if parts else np.zeros((n, 0), dtype=bool)
    return index, weight, oov


@dataclass
class SequenceField:
    """One sequence field: the kept training rows of every user in (user, time, row order) order.

    `rank` (sorted) is each kept training row's position in that order over *all* rows, `ids` its item's
    id in the item_id field's vocabulary, `start`/`end` each user's slice of the two. A row at
    position r sees the kept rows of its user before r: `searchsorted(rank, r)` is where they end."""

    name: str
    max_len: int
    positive_only: bool
    item_field: str  # the field whose ids the sequence holds
    rank: np.ndarray  # (n_kept,) int64, sorted
    ids: np.ndarray  # (n_kept,) int64
    start: np.ndarray  # (n_users,) int64
    end: np.ndarray  # (n_users,) int64

    def gather(self, users: np.ndarray, rank: np.ndarray | None = None) -> np.ndarray:
        """(N, max_len) ids, oldest first and the latest last, left-padded with 0: the user's kept
        training rows before `rank` (None: all of them, the time after training)."""
        users = np.asarray(users, dtype=np.int64)
        start, end = self.start[users], self.end[users]
        if rank is not None:
            # rows of a user sit inside its slice of the order, so this only ever shortens it
            end = np.clip(np.searchsorted(self.rank, np.asarray(rank, dtype=np.int64), side="left"), start, end)
        position = end[:, None] - self.max_len + np.arange(self.max_len)
        valid = position >= start[:, None]
        if len(self.ids) == 0:
            return np.zeros((len(users), self.max_len), dtype=np.int64)
        return np.where(valid, self.ids[np.clip(position, 0, len(self.ids) - 1)], 0)

    def describe(self) -> dict:
        lengths = np.minimum(self.end - self.start, self.max_len)
        return {"kind": "sequence", "max_len": self.max_len, "positive_only": self.positive_only,
                "item_field": self.item_field, "training_rows": int(len(self.rank)),
                "mean_length_after_training": round(float(lengths.mean()), 3) if len(lengths) else 0.0}


def row_ranks(dataset: Dataset) -> np.ndarray | None:
    """Each interaction's position in (user, timestamp, row order); None without timestamps."""
    inter = dataset.interactions
    if inter.timestamp is None:
        return None
    n = len(inter)
    order = np.lexsort((np.arange(n), np.asarray(inter.timestamp), np.asarray(inter.user)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank


@dataclass
class CTRFeatures:
    """Fitted feature encoding: per-user and per-item id/weight blocks over one shared id space."""

    fields: list[str]  # user-side fields first, then item-side fields (the order of `rows`' F axis)
    user_index: np.ndarray  # (n_users, F_user, L)
    user_weight: np.ndarray
    item_index: np.ndarray  # (n_items, F_item, L)
    item_weight: np.ndarray
    n_ids: int  # size of the shared id space, padding id 0 included
    user_oov: np.ndarray  # (n_users, F_user) bool
    item_oov: np.ndarray  # (n_items, F_item) bool
    info: dict[str, dict] = field(default_factory=dict)
    sequences: list[SequenceField] = field(default_factory=list)  # not on the F axis: see `sequence_rows`

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    def sequence_rows(self, users: np.ndarray, rank: np.ndarray | None = None) -> list[np.ndarray]:
        """One (N, max_len) id block per sequence field (`SequenceField.gather`)."""
        return [s.gather(users, rank) for s in self.sequences]

    def rows(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`index (N, F, L)` and `weight (N, F, L)` of the (user, item) pairs."""
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        index = np.concatenate([self.user_index[users], self.item_index[items]], axis=1)
        weight = np.concatenate([self.user_weight[users], self.item_weight[items]], axis=1)
        return index, weight

    def oov_counts(self, users: np.ndarray, items: np.ndarray) -> dict[str, int]:
        """Rows per field whose value was not seen in training (mapped to the OOV id)."""
        flags = np.concatenate([self.user_oov[np.asarray(users)], self.item_oov[np.asarray(items)]], axis=1)
        return {name: int(count) for name, count in zip(self.fields, flags.sum(axis=0))}


def _check_spec(spec: FieldSpec) -> None:
    """Options that do not fit the field's kind, named (the experiment config checks them too)."""
    if spec.kind == "sequence":
        if not 1 <= spec.max_len <= MAX_SEQUENCE_LEN:
            raise FeatureError(f"feature {spec.name!r}: max_len {spec.max_len} is outside 1..{MAX_SEQUENCE_LEN} "
                               f"(the limit on a sequence field); give max_len: {MAX_SEQUENCE_LEN} or less")
        if spec.hash_buckets is not None or spec.table is not None or spec.column is not None:
            raise FeatureError(f"feature {spec.name!r}: a sequence field is the user's training items; "
                               "hash_buckets, table and column do not apply to it")
    if spec.hash_buckets is not None:
        if spec.kind != "categorical":
            raise FeatureError(f"feature {spec.name!r}: hash_buckets applies to kind: categorical only")
        if spec.hash_buckets < 1:
            raise FeatureError(f"feature {spec.name!r}: hash_buckets must be >= 1, got {spec.hash_buckets}")
    if spec.kind == "semantic_id":
        if spec.table == "user":
            raise FeatureError(f"feature {spec.name!r}: a semantic_id describes items; it cannot come from the "
                               "user table")
        if spec.tokens not in TOKEN_SCHEMES:
            raise FeatureError(f"feature {spec.name!r}: tokens must be one of {', '.join(TOKEN_SCHEMES)}, "
                               f"got {spec.tokens!r}")
        if spec.pooling not in ("sum", "mean"):
            raise FeatureError(f"feature {spec.name!r}: pooling must be sum or mean, got {spec.pooling!r}")
        if spec.spm_vocab < 1:
            raise FeatureError(f"feature {spec.name!r}: spm_vocab must be >= 1, got {spec.spm_vocab}")


def _resolve(spec: FieldSpec, dataset: Dataset, codes: Mapping[str, np.ndarray] | None = None):
    """(table, one value per entity). A hashed id yields the external ids (stable across vocabularies);
    a semantic_id field yields the items' code lists, from `codes[name]` or an item-table column."""
    _check_spec(spec)
    n_users, n_items = dataset.interactions.n_users, dataset.interactions.n_items
    column = spec.source
    if spec.kind == "sequence":
        if dataset.interactions.timestamp is None:
            raise FeatureError(f"feature {spec.name!r} is a sequence field, but {dataset.name!r} has no timestamps "
                               "to order a user's items by; use data with a timestamp column or drop the field")
        return "sequence", None
    if spec.kind == "semantic_id":
        if codes is not None and spec.name in codes:
            given = codes[spec.name]
            if len(given) != n_items:
                raise FeatureError(f"feature {spec.name!r}: {len(given)} semantic IDs given for {n_items} items; "
                                   "give one row per item index")
            return "item", [[int(c) for c in row if int(c) >= 0] for row in np.asarray(given)]
        if column in dataset.item_table:
            try:
                return "item", parse_codes(dataset.item_table[column], f"feature {spec.name!r}")
            except ValueError as exc:
                raise FeatureError(str(exc)) from None
        raise FeatureError(f"feature {spec.name!r} is a semantic_id, but no codes were given for it and the item "
                           f"table of {dataset.name!r} has no column {column!r} of code sequences; compute them "
                           "from item content (the experiment runner does: docs/ctr.md) or add the column")
    hashed = spec.hash_buckets is not None
    if column == "user_id" and spec.table in (None, "user"):
        return "user", dataset.interactions.users.ids if hashed else np.arange(n_users)
    if column == "item_id" and spec.table in (None, "item"):
        return "item", dataset.interactions.items.ids if hashed else np.arange(n_items)
    for table, columns in (("user", dataset.user_table), ("item", dataset.item_table)):
        if spec.table in (None, table) and column in columns:
            return table, np.asarray(columns[column])
    available = sorted({*ID_FIELDS, *dataset.user_table, *dataset.item_table})
    where = f" in the {spec.table} table" if spec.table else ""
    named = f"feature {spec.name!r}" + (f" (column {column!r})" if column != spec.name else "")
    raise FeatureError(f"{named} is not in the data{where} of {dataset.name!r}; available: "
                       f"{', '.join(available)}")


def _is_item_id(spec: FieldSpec) -> bool:
    return spec.kind == "categorical" and spec.source == "item_id" and spec.table in (None, "item")


def check_sequence_specs(specs: Sequence[FieldSpec]) -> None:
    """A sequence field holds item ids: it needs an item_id field among `specs` to take them from."""
    sequences = [s for s in specs if s.kind == "sequence"]
    for spec in sequences:
        _check_spec(spec)
    if sequences and not any(_is_item_id(s) for s in specs):
        raise FeatureError(f"feature {sequences[0].name!r} is a sequence of item ids, but item_id is not a feature "
                           "(its ids and embeddings are the ones the sequence shares); add {name: item_id}")


def fit_features(dataset: Dataset, specs: Sequence[FieldSpec], train_users: np.ndarray,
                 train_items: np.ndarray, codes: Mapping[str, np.ndarray] | None = None, *,
                 train_rank: np.ndarray | None = None, train_labels: np.ndarray | None = None) -> CTRFeatures:
    """Encode every field of `specs`; vocabularies and statistics from the entities of the training rows
    (`train_users`/`train_items`: one entry per training row). `codes`: semantic IDs by field name,
    `(n_items, L)` int arrays (negative = padding). Sequence fields read `train_rank` (each training
    row's position in (user, time, row order), `row_ranks`) and `train_labels` (for `positive_only`)."""
    if not specs:
        raise FeatureError("features: give at least one field (e.g. user_id and item_id)")
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise FeatureError(f"feature {repeated[0]!r} is listed twice")
    n_users, n_items = dataset.interactions.n_users, dataset.interactions.n_items
    counts = {"user": np.bincount(np.asarray(train_users, dtype=np.int64), minlength=n_users),
              "item": np.bincount(np.asarray(train_items, dtype=np.int64), minlength=n_items)}
    seen = {side: count > 0 for side, count in counts.items()}
    sides: dict[str, list[tuple[str, _Encoded]]] = {"user": [], "item": []}
    info: dict[str, dict] = {}
    offset = 1  # id 0 is padding
    check_sequence_specs(specs)
    for spec in specs:
        if spec.kind == "numeric" and spec.source in ID_FIELDS:
            raise FeatureError(f"feature {spec.name!r} is an id; declare it kind: categorical")
        if spec.kind == "sequence":
            _resolve(spec, dataset, codes)  # names a dataset without timestamps
            continue
        table, column = _resolve(spec, dataset, codes)
        encoded, used, described = _fit_encode(spec, column, seen[table], offset, counts[table])
        sides[table].append((spec.name, encoded))
        info[spec.name] = {"table": table, "offset": offset, **described}
        offset += used
    width = max([e.index.shape[1] for side in sides.values() for _, e in side] or [1])
    user_index, user_weight, user_oov = _stack([e for _, e in sides["user"]], n_users, width)
    item_index, item_weight, item_oov = _stack([e for _, e in sides["item"]], n_items, width)
    item_names = [n for n, _ in sides["item"]]
    sequences = []
    for spec in (s for s in specs if s.kind == "sequence"):
        if train_rank is None or train_labels is None:
            raise FeatureError(f"feature {spec.name!r} is a sequence field: give the training rows' train_rank "
                               "(row_ranks) and train_labels (make_ctr_split does)")
        item_field = next(s.name for s in specs if _is_item_id(s))
        # the item_id field's own id of each item (OOV for an item outside its vocabulary)
        item_ids = item_index[:, item_names.index(item_field), 0]
        sequence = _sequence_field(spec, item_field, item_ids, np.asarray(train_users, dtype=np.int64),
                                   np.asarray(train_items, dtype=np.int64), np.asarray(train_rank, dtype=np.int64),
                                   np.asarray(train_labels), n_users)
        sequences.append(sequence)
        info[spec.name] = sequence.describe()
    return CTRFeatures([n for n, _ in sides["user"]] + item_names, user_index, user_weight,
                       item_index, item_weight, offset, user_oov, item_oov, info, sequences)


def _sequence_field(spec: FieldSpec, item_field: str, item_ids: np.ndarray, users: np.ndarray, items: np.ndarray,
                    rank: np.ndarray, labels: np.ndarray, n_users: int) -> SequenceField:
    keep = labels > 0 if spec.positive_only else np.ones(len(rank), dtype=bool)
    order = np.argsort(rank[keep], kind="stable")
    kept_rank, kept_users = rank[keep][order], users[keep][order]
    ids = item_ids[items[keep][order]].astype(np.int64)
    # ranks group the rows by user first, so each user's kept rows are one contiguous slice
    counts = np.bincount(kept_users, minlength=n_users)
    end = np.cumsum(counts).astype(np.int64)
    return SequenceField(spec.name, spec.max_len, spec.positive_only, item_field, kept_rank, ids, end - counts, end)


@dataclass(frozen=True)
class CTRData:
    """Labelled rows (user, item, label) with the features that encode them."""

    features: CTRFeatures
    user: np.ndarray
    item: np.ndarray
    label: np.ndarray
    # each row's position in (user, time, row order) over all rows (`row_ranks`): where its sequence
    # fields stop; None: after training (every training row of the user is before it)
    rank: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)

    def take(self, rows: np.ndarray) -> "CTRData":
        return CTRData(self.features, self.user[rows], self.item[rows], self.label[rows],
                       None if self.rank is None else self.rank[rows])

    def encode(self, rows: np.ndarray | slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(None) if rows is None else rows
        return self.features.rows(self.user[rows], self.item[rows])

    def sequences(self, rows: np.ndarray | slice | None = None) -> list[np.ndarray]:
        """The rows' sequence fields, one (N, max_len) id block each (none without sequence fields)."""
        rows = slice(None) if rows is None else rows
        return self.features.sequence_rows(self.user[rows], None if self.rank is None else self.rank[rows])

    def oov_counts(self) -> dict[str, int]:
        return self.features.oov_counts(self.user, self.item)

    @property
    def positive_rate(self) -> float:
        return float(self.label.mean()) if len(self.label) else float("nan")


@dataclass(frozen=True)
class CTRSplit:
    train: CTRData
    valid: CTRData
    test: CTRData

    @property
    def features(self) -> CTRFeatures:
        return self.train.features

    def fingerprint(self) -> str:
        """Content hash of the three parts' rows and labels and of the encoded features (id blocks,
        weights, field order): equal fingerprints mean every model saw the same inputs. Computing the
        split costs about 0.2 s on ml-1m, so it is recomputed per run rather than cached on disk; the
        fingerprint is what makes two runs' inputs comparable."""
        h = hashlib.sha1()
        for data in (self.train, self.valid, self.test):
            for array in (data.user, data.item, data.label):
                h.update(np.ascontiguousarray(array).tobytes())
            h.update(b"|")
        f = self.features
        for array in (f.user_index, f.user_weight, f.item_index, f.item_weight):
            h.update(np.ascontiguousarray(array).tobytes())
        h.update("\x1f".join(f.fields).encode())
        if f.sequences:  # only then, so that the fingerprints of splits without one stay as they were
            for s in f.sequences:
                h.update(f"{s.name}:{s.max_len}:{s.positive_only}:{s.item_field}".encode())
                for array in (s.rank, s.ids, s.start, s.end):
                    h.update(np.ascontiguousarray(array).tobytes())
            for data in (self.train, self.valid, self.test):
                h.update(b"-" if data.rank is None else np.ascontiguousarray(data.rank).tobytes())
        return h.hexdigest()[:16]

    def rows_fingerprint(self) -> str:
        """Content hash of the three parts' rows and labels only: equal for every feature set drawn on one
        row split, so the predictions of models that read different fields pair up row by row
        (`recstack compare` on CTR runs); `fingerprint` also covers the encoded features."""
        h = hashlib.sha1(b"ctr-rows")
        for data in (self.train, self.valid, self.test):
            for array in (data.user, data.item, data.label):
                h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, object]:
        return {part: {"rows": len(data), "positive_rate": round(data.positive_rate, 6),
                       **({"oov_rows": data.oov_counts()} if part != "train" else {})}
                for part, data in (("train", self.train), ("valid", self.valid), ("test", self.test))}


def make_ctr_split(dataset: Dataset, specs: Sequence[FieldSpec], *, threshold: float = 4.0,
                   ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                   codes: Mapping[str, np.ndarray] | None = None, cold_items: float = 0.0,
                   parts: Sequence[np.ndarray] | None = None) -> CTRSplit:
    """Labels by `threshold`, a random `ratios` row split (with `cold_items` > 0: that share of the
    items held out of training, `item_cold_split`), features fitted on the training rows. `codes`:
    the semantic IDs of the `semantic_id` fields, by field name. `parts`: the (train, valid, test)
    row indices into `dataset.interactions` to use instead of drawing a split, e.g. a peer library's
    exported split, so that both libraries train and test on the same rows."""
    inter = dataset.interactions
    for spec in specs:  # name the missing feature before anything is computed
        _resolve(spec, dataset, codes)
    check_sequence_specs(specs)
    label = labels_from_ratings(inter.value, threshold)
    users, items = np.asarray(inter.user, dtype=np.int64), np.asarray(inter.item, dtype=np.int64)
    if parts is not None:
        train, valid, test = _given_parts(parts, len(inter), cold_items)
    elif cold_items > 0:
        train, valid, test = item_cold_split(items, ratios, cold_items, seed)
    else:
        train, valid, test = random_row_split(len(inter), ratios, seed)
    if len(train) == 0:
        raise FeatureError("the training rows are empty; check the split ratios")
    sequential = any(spec.kind == "sequence" for spec in specs)
    rank = row_ranks(dataset) if sequential else None
    features = fit_features(dataset, specs, users[train], items[train], codes,
                            train_rank=None if rank is None else rank[train], train_labels=label[train])
    part = lambda rows: CTRData(features, users[rows], items[rows], label[rows],  # noqa: E731
                                None if rank is None else rank[rows])
    return CTRSplit(part(train), part(valid), part(test))


def _given_parts(parts: Sequence[np.ndarray], n: int, cold_items: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check caller-given (train, valid, test) row indices: three integer arrays, within the rows, disjoint."""
    if cold_items > 0:
        raise FeatureError("parts and cold_items both choose the split; pass one of them")
    if len(parts) != 3:
        raise FeatureError(f"parts must be three row-index arrays (train, valid, test), got {len(parts)}")
    out = []
    for name, rows in zip(("train", "valid", "test"), parts):
        rows = np.asarray(rows)
        if rows.ndim != 1 or (len(rows) and not np.issubdtype(rows.dtype, np.integer)):
            raise FeatureError(f"parts: the {name} rows must be a 1-d array of integer row indices")
        rows = rows.astype(np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise FeatureError(f"parts: the {name} rows index outside the {n:,} interactions (0..{n - 1})")
        out.append(np.sort(rows))
    together = np.concatenate(out)
    if len(np.unique(together)) != len(together):
        raise FeatureError("parts: a row is in two parts (or twice in one); the parts must be disjoint")
    return out[0], out[1], out[2]


def observed_rows(data: CTRData, n_items: int, n_negatives: int, exclude: np.ndarray,
                  rng: np.random.Generator) -> CTRData:
    """Implicit-feedback rows over the same features: every row of `data` as label 1 (it was rated), plus
    `n_negatives` items per row drawn uniformly among the items the user has no key for in `exclude`
    (user * n_items + item of the observed pairs), labelled 0. For a ranker that reorders a retriever's
    candidates by P(the user rates the item), as the full-ranking metrics count hits."""
    users = np.repeat(data.user, n_negatives)
    items = rng.integers(0, n_items, len(users))
    exclude = np.unique(exclude)
    for _ in range(20):  # resample the collisions; a user who rated nearly everything keeps a few
        bad = np.isin(users * n_items + items, exclude)
        if not bad.any():
            break
        items[bad] = rng.integers(0, n_items, int(bad.sum()))
    label = np.concatenate([np.ones(len(data), np.float32), np.zeros(len(users), np.float32)])
    # a negative stands where its observed row stands in time: it sees the same sequence
    rank = None if data.rank is None else np.concatenate([data.rank, np.repeat(data.rank, n_negatives)])
    return CTRData(data.features, np.concatenate([data.user, users]), np.concatenate([data.item, items]), label, rank)
