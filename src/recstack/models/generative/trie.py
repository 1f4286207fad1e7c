"""`PrefixTrie`: every item's code as a tree stored level by level in CSR arrays; what a generative
recommender decodes against (only prefixes of real codes may grow, `models/kernels/beam.py`).
Codes must be unique and prefix-free (no code is the start of another; padded tails are `PAD`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from recstack.models.generative.codes import PAD, TokenizerError


class PrefixTrie:
    """All codes as a tree stored level by level in CSR arrays.

    Nodes at depth d (d tokens decoded; the root is node 0 at depth 0) are numbered in the
    lexicographic order of their prefixes. For constrained beam search:

    - `allowed_mask(depth, nodes, size)`: bool `(B, size)`, the tokens each beam may emit next;
    - `step(depth, nodes, tokens)`: the child nodes at depth + 1 (-1 where a token is not allowed);
    - `item_at(depth, nodes)`: the item whose code ends at that node, else -1.
    """

    def __init__(self, codes: np.ndarray) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] < 1:
            raise TokenizerError(f"codes must be a 2-D array (n_items, L), got shape {codes.shape}")
        n, depth = codes.shape
        lengths = (codes != PAD).sum(axis=1)
        if n and lengths.min() < 1:
            raise TokenizerError(f"item {int(np.argmin(lengths))} has an empty code")
        order = np.lexsort(codes.T[::-1])
        rows = codes[order]
        row_length = lengths[order]
        self.depth, self.n_items = depth, n
        self._order = order
        self._stride = int(codes.max()) + 2 if n else 1
        self._indptr: list[np.ndarray] = []
        self._token: list[np.ndarray] = []
        self._key: list[np.ndarray] = []
        self._start: list[np.ndarray] = []
        self._stop: list[np.ndarray] = []
        self._item: list[np.ndarray] = []
        parent = np.zeros(n, dtype=np.int64)  # node of each sorted row at the current depth
        n_nodes = 1
        for d in range(depth):
            active = np.flatnonzero(row_length > d)
            token = rows[active, d]
            above = parent[active]
            new = np.ones(len(active), dtype=bool)
            if len(active) > 1:
                new[1:] = (above[1:] != above[:-1]) | (token[1:] != token[:-1])
            child = np.cumsum(new) - 1
            heads = np.flatnonzero(new)
            tails = np.append(heads[1:], len(active)) - 1
            counts = np.bincount(above[new], minlength=n_nodes)
            self._indptr.append(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
            self._token.append(token[new])
            self._key.append(above[new] * self._stride + token[new])
            self._start.append(active[heads])
            self._stop.append(active[tails] + 1)
            item = np.full(len(heads), -1, dtype=np.int64)
            ends = active[row_length[active] == d + 1]
            end_nodes = child[row_length[active] == d + 1]
            item[end_nodes] = order[ends]
            self._item.append(item)
            size = self._stop[-1][end_nodes] - self._start[-1][end_nodes]
            if np.any(size != 1):
                bad = order[ends[np.flatnonzero(size != 1)[0]]]
                raise TokenizerError(f"the code of item {int(bad)} ({codes[bad][codes[bad] != PAD].tolist()}) is "
                                     "shared with another item or is the start of another item's code; "
                                     "codes must be unique and prefix-free")
            new_parent = np.full(n, -1, dtype=np.int64)
            new_parent[active] = child
            parent = new_parent
            n_nodes = len(heads)

    def n_nodes(self, depth: int) -> int:
        """Number of distinct prefixes of length `depth` (1 at depth 0)."""
        return 1 if depth == 0 else len(self._token[depth - 1])

    def children(self, depth: int, node: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, child nodes at depth + 1) of one node, tokens ascending."""
        if depth >= self.depth:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        lo, hi = self._indptr[depth][node], self._indptr[depth][node + 1]
        return self._token[depth][lo:hi], np.arange(lo, hi, dtype=np.int64)

    def step(self, depth: int, nodes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Child node of each (node, token) at depth + 1; -1 where the token is not a child (or node is -1)."""
        nodes, tokens = np.asarray(nodes, dtype=np.int64), np.asarray(tokens, dtype=np.int64)
        out = np.full(np.broadcast(nodes, tokens).shape, -1, dtype=np.int64)
        if depth >= self.depth:
            return out
        nodes, tokens = np.broadcast_arrays(nodes, tokens)
        ok = (nodes >= 0) & (tokens >= 0) & (tokens < self._stride)
        keys = self._key[depth]
        query = nodes[ok] * self._stride + tokens[ok]
        where = np.searchsorted(keys, query)
        found = where < len(keys)
        found[found] = keys[where[found]] == query[found]
        result = np.full(len(query), -1, dtype=np.int64)
        result[found] = where[found]
        out[ok] = result
        return out

    def allowed_mask(self, depth: int, nodes: np.ndarray, size: int) -> np.ndarray:
        """bool `(len(nodes), size)`: which tokens each node may be followed by (none for node -1)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        mask = np.zeros((len(nodes), size), dtype=bool)
        if depth >= self.depth:
            return mask
        indptr = self._indptr[depth]
        valid = np.flatnonzero(nodes >= 0)
        if not len(valid):
            return mask
        lo, hi = indptr[nodes[valid]], indptr[nodes[valid] + 1]
        counts = hi - lo
        beam = np.repeat(valid, counts)
        flat = np.repeat(lo - np.cumsum(np.append(0, counts[:-1])), counts) + np.arange(counts.sum())
        tokens = self._token[depth][flat]
        keep = tokens < size
        mask[beam[keep], tokens[keep]] = True
        return mask

    def item_at(self, depth: int, nodes: np.ndarray) -> np.ndarray:
        """Item whose code ends at each node of `depth` (-1 where none does)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        if depth == 0:
            return np.full(nodes.shape, -1, dtype=np.int64)
        items = self._item[depth - 1]
        out = np.full(nodes.shape, -1, dtype=np.int64)
        ok = nodes >= 0
        out[ok] = items[nodes[ok]]
        return out

    def find(self, prefix: Sequence[int]) -> int:
        """The node of `prefix` at depth len(prefix), or -1 when no code starts with it."""
        node = 0
        for d, token in enumerate(prefix):
            if d >= self.depth:
                return -1
            node = int(self.step(d, np.array([node]), np.array([int(token)]))[0])
            if node < 0:
                return -1
        return node

    def items_of_prefix(self, prefix: Sequence[int]) -> np.ndarray:
        """Items whose codes start with `prefix`, in code order (all items for an empty prefix)."""
        prefix = list(prefix)
        if not prefix:
            return self._order.copy()
        node = self.find(prefix)
        if node < 0:
            return np.empty(0, dtype=np.int64)
        d = len(prefix) - 1
        return self._order[self._start[d][node]:self._stop[d][node]].copy()

    def next_tokens(self, prefix: Sequence[int]) -> np.ndarray:
        """Tokens that may follow `prefix` (ascending); empty when the prefix is a full code or invalid."""
        node = self.find(prefix)
        if node < 0:
            return np.empty(0, dtype=np.int64)
        return self.children(len(prefix), node)[0].copy()

    def total_nodes(self) -> int:
        return 1 + sum(len(t) for t in self._token)


__all__ = ["PrefixTrie"]
