"""Vectorised training-pair iteration and uniform negative sampling (numpy only, no torch).

`UniformNegativeSampler` draws every negative of a batch at once, finds the draws that hit a
positive, and redraws only those until none is left: no Python loop per sample. Membership is
exact: a one-hash Bloom filter over the `user * n_items + item` keys (2-4 bytes per positive)
clears most draws in a few vectorised passes, and only the draws it flags go on to a binary search
of the sorted keys (searching every draw had cost 80% of a BPR epoch at 1M interactions).
`EpochPairs` walks (user, positive item) pairs in a fresh random order each epoch by permuting an
index, never copying the pairs themselves.
Both are seeded through `np.random.Generator`, so a seed fixes every draw.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp

from recstack.errors import RecstackError

# A redraw round removes at least the share of negatives in a row; 10,000 rounds without
# finishing means a bug or a user who is within a few items of owning the whole catalogue.
_MAX_ROUNDS = 10_000


_BLOCK = 1 << 20  # keys or rows per block where a whole epoch's 64-bit temporaries would not fit
_BLOOM_BITS_PER_KEY = 16  # at least; false positives about 1 - exp(-1/16) = 6% at most, all resolved exactly
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: multiply, keep the top bits


class PositiveKeys:
    """Exact set membership for int64 keys: a one-hash Bloom filter in front of a sorted array.

    >>> positives = PositiveKeys(np.array([3, 17, 42]))
    >>> positives.contains(np.array([17, 18]))   # array([ True, False])
    """

    def __init__(self, sorted_keys: np.ndarray) -> None:
        self.keys = np.asarray(sorted_keys, dtype=np.int64)
        n_bits = max(64, _BLOOM_BITS_PER_KEY * len(self.keys))
        self._shift = np.uint64(64 - int(np.ceil(np.log2(n_bits))))
        self._bits = np.zeros(1 << (64 - int(self._shift) - 3), dtype=np.uint8)
        for start in range(0, len(self.keys), _BLOCK):  # a block at a time: the hashing's temporaries are 64-bit
            slots = self._slots(self.keys[start:start + _BLOCK])
            np.bitwise_or.at(self._bits, slots >> 3, np.left_shift(1, slots & 7).astype(np.uint8))

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        return ((keys.astype(np.uint64) * _GOLDEN) >> self._shift).astype(np.int64)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Boolean array of `keys`' shape: is each key in the set?"""
        keys = np.asarray(keys, dtype=np.int64)
        result = np.zeros(keys.shape, dtype=bool)
        if len(self.keys) == 0 or keys.size == 0:
            return result
        flat, out = keys.reshape(-1), result.reshape(-1)
        # in blocks: the hashing holds several 64-bit temporaries per key (issue 18: 40M keys at once
        # cost gigabytes)
        for start in range(0, len(flat), _BLOCK):
            out[start:start + _BLOCK] = self._contains(flat[start:start + _BLOCK])
        return result

    def _contains(self, flat: np.ndarray) -> np.ndarray:
        result = np.zeros(flat.shape, dtype=bool)
        slots = self._slots(flat)
        maybe = np.flatnonzero((self._bits[slots >> 3] >> (slots & 7).astype(np.uint8)) & 1)
        candidates = flat[maybe]
        found = np.minimum(np.searchsorted(self.keys, candidates), len(self.keys) - 1)
        result[maybe] = self.keys[found] == candidates
        return result


class NoNegativesError(RecstackError):
    """A user has interacted with every item, so no negative can be drawn for them."""


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def positive_keys(matrix: sp.spmatrix) -> np.ndarray:
    """Sorted, unique int64 keys `user * n_items + item` of the non-zero cells of a (users x items) matrix."""
    csr = sp.csr_matrix(matrix)
    n_items = csr.shape[1]
    # formed in place in one 64-bit array (at 40M pairs each extra 64-bit temporary is 320 MB)
    keys = np.repeat(np.arange(csr.shape[0], dtype=np.int64) * n_items, np.diff(csr.indptr))
    keys += csr.indices
    # CSR from Interactions.matrix() is already sorted and deduplicated; other inputs may not be
    if len(keys) > 1 and not np.all(keys[1:] > keys[:-1]):
        keys = np.unique(keys)
    return keys


class UniformNegativeSampler:
    """Uniform negatives over the items a user has not interacted with in `matrix` (rows = users).

    >>> sampler = UniformNegativeSampler(train.matrix(), rng=0)
    >>> negatives = sampler.sample(users, n_negatives=4)      # (len(users), 4) int64
    """

    def __init__(self, matrix: sp.spmatrix, rng: np.random.Generator | int | None = None) -> None:
        self.n_users, self.n_items = matrix.shape
        self.keys = positive_keys(matrix)
        self._positives = PositiveKeys(self.keys)
        positives_per_user = np.bincount(self.keys // max(self.n_items, 1), minlength=self.n_users)
        self._no_negatives = positives_per_user >= self.n_items
        self.rng = _as_rng(rng)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean array (broadcast shape of `users`, `items`): is (user, item) a positive?"""
        users, items = np.asarray(users), np.asarray(items)
        shape = np.broadcast_shapes(users.shape, items.shape)
        if len(shape) == 0 or int(np.prod(shape)) <= _BLOCK:
            return self._positives.contains(users.astype(np.int64) * self.n_items + items)
        users, items = np.broadcast_to(users, shape), np.broadcast_to(items, shape)
        result = np.empty(shape, dtype=bool)
        step = max(1, _BLOCK // max(int(np.prod(shape[1:])), 1))
        for start in range(0, shape[0], step):  # the 64-bit keys a block of rows at a time
            rows = slice(start, start + step)
            result[rows] = self._positives.contains(users[rows].astype(np.int64) * self.n_items + items[rows])
        return result

    def sample(self, users: np.ndarray, n_negatives: int = 1) -> np.ndarray:
        """(len(users), n_negatives) int64 item indices, each uniform over that user's non-positives."""
        users = np.asarray(users)  # int32 or int64: the keys are formed in 64 bits a block at a time
        if users.dtype.kind not in "iu":
            users = users.astype(np.int64)
        if len(users) and self._no_negatives[users].any():
            culprit = int(users[self._no_negatives[users]][0])
            raise NoNegativesError(
                f"user index {culprit} has interacted with all {self.n_items} items, so no negative item "
                "can be sampled; drop such users (e.g. with a k-core or max-count filter) before training"
            )
        items = self._draw((len(users), n_negatives))
        owners = np.broadcast_to(users[:, None], items.shape)
        bad = self.is_positive(owners, items)
        rows, cols = np.nonzero(bad)
        for _ in range(_MAX_ROUNDS):
            if len(rows) == 0:
                return items
            redrawn = self._draw(len(rows))
            items[rows, cols] = redrawn
            still = self.is_positive(users[rows], redrawn)
            rows, cols = rows[still], cols[still]
        raise RuntimeError(f"negative sampling did not finish after {_MAX_ROUNDS} redraw rounds")


    def _draw(self, size) -> np.ndarray:
        return self.rng.integers(0, self.n_items, size=size, dtype=np.int64)

    def log_q(self, items: np.ndarray) -> np.ndarray:
        """log of the proposal probability of each item (for the logQ correction of sampled softmax)."""
        return np.full(np.shape(items), -np.log(self.n_items), dtype=np.float32)


class PopularityNegativeSampler(UniformNegativeSampler):
    """Negatives drawn with probability proportional to popularity ** alpha, positives rejected in bulk.

    alpha = 0 is uniform, alpha = 1 proportional to popularity (word2vec used 0.75). Items with no
    training interactions keep a pseudo-count of 1 so every item can be drawn.
    """

    def __init__(self, matrix: sp.spmatrix, alpha: float = 0.75, rng: np.random.Generator | int | None = None) -> None:
        super().__init__(matrix, rng)
        counts = np.bincount(self.keys % max(self.n_items, 1), minlength=self.n_items).astype(np.float64)
        weights = np.maximum(counts, 1.0) ** alpha
        self.probabilities = weights / weights.sum()
        self._cdf = np.cumsum(self.probabilities)

    def _draw(self, size) -> np.ndarray:
        draws = np.searchsorted(self._cdf, self.rng.random(size) * self._cdf[-1], side="right")
        return np.minimum(draws, self.n_items - 1).astype(np.int64)

    def log_q(self, items: np.ndarray) -> np.ndarray:
        return np.log(self.probabilities[np.asarray(items)]).astype(np.float32)


class EpochPairs:
    """Mini-batches of (user, positive item) int64 arrays; each `iter()` is one epoch in a fresh order.

    Only an index permutation is drawn per epoch; the pairs are gathered batch by batch. The pairs
    are held as int32 (indices are, in `Interactions`) and batches handed out as int64.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, batch_size: int,
                 rng: np.random.Generator | int | None = None, shuffle: bool = True) -> None:
        self.users = _compact(np.asarray(users))
        self.items = _compact(np.asarray(items))
        if self.users.shape != self.items.shape or self.users.ndim != 1:
            raise ValueError(f"users and items must be 1-D and equally long, got {self.users.shape} and {self.items.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.rng = _as_rng(rng)

    @classmethod
    def from_matrix(cls, matrix: sp.spmatrix, batch_size: int,
                    rng: np.random.Generator | int | None = None, shuffle: bool = True) -> "EpochPairs":
        """One pair per non-zero cell of a (users x items) matrix (duplicate events count once)."""
        csr = sp.csr_matrix(matrix)
        if csr.has_canonical_format:  # sorted and without duplicates (Interactions.matrix()): read it as is
            users = np.repeat(np.arange(csr.shape[0], dtype=np.int32), np.diff(csr.indptr))
            return cls(users, csr.indices, batch_size, rng, shuffle)
        keys = positive_keys(csr)
        n_items = csr.shape[1]
        return cls(keys // n_items, keys % n_items, batch_size, rng, shuffle)

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    @property
    def n_pairs(self) -> int:
        return len(self.users)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for _, users, items in self.indexed():
            yield users, items

    def indexed(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One epoch of (pair index, users, items) batches, so per-pair arrays drawn once per epoch
        (e.g. all negatives in one vectorised call) can be sliced alongside."""
        order = self.order() if self.shuffle else np.arange(len(self.users))
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size].astype(np.int64)
            yield index, self.users[index].astype(np.int64), self.items[index].astype(np.int64)

    def order(self) -> np.ndarray:
        """A fresh random order of the pairs: `rng.permutation(n_pairs)` (the same draws and result)
        held as int32, half the memory of an epoch's permutation."""
        order = np.arange(self.n_pairs, dtype=np.int32 if self.n_pairs < 2**31 else np.int64)
        self.rng.shuffle(order)
        return order


def _compact(indices: np.ndarray) -> np.ndarray:
    """Non-negative int indices as int32 where they fit, else int64."""
    if indices.dtype.kind not in "iu":
        indices = indices.astype(np.int64)
    fits = len(indices) == 0 or (indices.min() >= 0 and indices.max() < 2**31)
    return indices.astype(np.int32 if fits else np.int64, copy=False)


def gathered(values: np.ndarray, order: np.ndarray, dtype=np.int32) -> np.ndarray:
    """values[order] as `dtype`, gathered a block of rows at a time (no full-length 64-bit temporary)."""
    out = np.empty((len(order),) + values.shape[1:], dtype=dtype)
    for start in range(0, len(order), _BLOCK):
        out[start:start + _BLOCK] = values[order[start:start + _BLOCK]]
    return out


def pair_batches(matrix: sp.csr_matrix, batch_size: int, n_negatives: int, rng: np.random.Generator):
    """An epoch factory of (users, positives, negatives (B, n_negatives)) batches."""
    pairs = EpochPairs.from_matrix(matrix, batch_size, rng)
    sampler = UniformNegativeSampler(matrix, rng)

    def batches():
        negatives = sampler.sample(pairs.users, n_negatives)  # one vectorised draw per epoch
        for index, users, items in pairs.indexed():
            yield users, items, negatives[index]

    return batches
