"""Ranking features from semantic IDs: the token schemes of Singh et al., "Better Generalization with
Semantic IDs: A Case Study in Ranking for Recommendations" (RecSys 2024, arXiv 2306.08121), and the
stable hash of the random-hashing baseline they replace.

An item's semantic ID is a sequence of L codes (c_1, ..., c_L), coarse to fine, from a residual
quantiser over its content embedding (RQ-VAE in the paper; computed in the experiment layer, which
hands this module plain integer arrays, so `recstack.data` never imports a model). A ranking model
cannot embed the whole sequence as one id without losing what makes it useful (two similar items
would share nothing), nor only its first code (no memorisation), so the paper derives *tokens* from
the sequence, embeds each and pools them:

- `unigram`: one token per level, (l, c_l): L tokens. Items that agree at a level share that token.
- `bigram`: one token per pair of consecutive levels, (l, c_l, c_{l+1}): L - 1 tokens.
- `prefix` ("prefix-ngram"): one token per prefix, (c_1), (c_1, c_2), ..., (c_1, ..., c_L): L
  tokens. The coarse prefixes are shared by many items (generalisation), the full prefix by the item
  and its collisions only (memorisation).
- `spm`: a SentencePiece-style vocabulary of variable-length pieces learnt from the training
  items' code sequences (`learn_pieces`): sub-sequences that occur often (weighted by the items'
  training rows: the paper learns SPM from the item distribution) become one token, so a frequent
  item gets a piece of its own while a rare or new one is split into shorter, shared pieces.

The vocabulary of the tokens is fitted on the training rows like any other CTR field
(`recstack.data.ctr`): a token only unseen items carry is OOV, and an unseen item still shares its
coarse tokens with the training items that resemble it, which is the point of the method.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

NGRAM_SCHEMES = ("unigram", "bigram", "prefix")
TOKEN_SCHEMES = (*NGRAM_SCHEMES, "spm")

Piece = tuple[int, tuple[int, ...]]  # (first level, codes): the codes of levels first .. first + len - 1


# ---- the random-hashing baseline ------------------------------------------------------------------

def stable_hash(value: str, seed: int = 0) -> int:
    """A 64-bit hash of `value` that is the same in every process and on every machine.

    Python's `hash()` of a string is salted per process (PYTHONHASHSEED), so buckets built with it
    would change between the run that trains a model and the one that serves it. BLAKE2b keyed by
    the seed is stable, spreads well, and different seeds give independent bucketings."""
    key = int(seed).to_bytes(8, "little", signed=False)
    return int.from_bytes(hashlib.blake2b(str(value).encode("utf-8"), digest_size=8, key=key).digest(), "little")


def hash_buckets(values: Iterable[str], n_buckets: int, seed: int = 0) -> np.ndarray:
    """Bucket `stable_hash(v, seed) % n_buckets` of each value (int64): the hashing trick of
    industrial rankers (Weinberger et al., ICML 2009), unrelated values collide at random."""
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    return np.fromiter((stable_hash(v, seed) % n_buckets for v in values), dtype=np.int64)


# ---- fixed n-gram schemes -------------------------------------------------------------------------

def _joined(codes: Sequence[int]) -> str:
    return "-".join(str(int(c)) for c in codes)


def ngram_tokens(code: Sequence[int], scheme: str) -> list[str]:
    """The tokens of one semantic ID under a fixed scheme (strings, unique within the scheme).

    >>> ngram_tokens((3, 1, 4), "unigram"), ngram_tokens((3, 1, 4), "bigram"), ngram_tokens((3, 1, 4), "prefix")
    (['0:3', '1:1', '2:4'], ['0:3-1', '1:1-4'], ['3', '3-1', '3-1-4'])

    The level is part of a unigram or bigram token: code 3 at level 0 and code 3 at level 1 are
    different clusters of different residuals. A prefix token needs no level: its length says it.
    A one-level ID has no bigram, so `bigram` gives its unigram instead."""
    code = [int(c) for c in code]
    if scheme == "unigram":
        return [f"{level}:{c}" for level, c in enumerate(code)]
    if scheme == "bigram":
        if len(code) < 2:
            return ngram_tokens(code, "unigram")
        return [f"{level}:{_joined(code[level:level + 2])}" for level in range(len(code) - 1)]
    if scheme == "prefix":
        return [_joined(code[:n]) for n in range(1, len(code) + 1)]
    raise ValueError(f"token scheme {scheme!r} is not one of {', '.join(NGRAM_SCHEMES)} (spm: learn_pieces)")


# ---- SentencePiece-style pieces -------------------------------------------------------------------

def piece_token(piece: Piece) -> str:
    """A piece as a token string: 'first level:codes' (e.g. '1:5-9' for c_2 = 5, c_3 = 9)."""
    return f"{piece[0]}:{_joined(piece[1])}"


@dataclass(frozen=True)
class PieceVocabulary:
    """Pieces of code sequences; `segment` splits a sequence into them by greedy longest match."""

    pieces: frozenset[Piece]
    n_alphabet: int  # single-code pieces (every (level, code) of the corpus)
    n_merges: int

    @property
    def max_length(self) -> int:
        return max((len(codes) for _, codes in self.pieces), default=1)

    def segment(self, code: Sequence[int]) -> list[Piece]:
        """Left to right, the longest piece of the vocabulary that starts at the current level and
        matches the codes there; a (level, code) the vocabulary never saw is a one-code piece (it
        becomes the field's OOV id downstream)."""
        code = tuple(int(c) for c in code)
        out: list[Piece] = []
        start = 0
        while start < len(code):
            for length in range(min(self.max_length, len(code) - start), 0, -1):
                piece = (start, code[start:start + length])
                if length == 1 or piece in self.pieces:
                    break
            out.append(piece)
            start += length
        return out

    def tokens(self, code: Sequence[int]) -> list[str]:
        return [piece_token(p) for p in self.segment(code)]


def learn_pieces(codes: Sequence[Sequence[int]], weights: Sequence[float] | None = None, vocab_size: int = 1000,
                 min_count: float = 2.0) -> PieceVocabulary:
    """A SentencePiece-style (BPE, Sennrich et al. 2016; Kudo and Richardson 2018) vocabulary of code pieces.

    The alphabet is every (level, code) of the corpus, as SentencePiece keeps every character. Then,
    as BPE does, the adjacent pair of pieces with the largest total weight across the corpus is
    merged into one piece, the corpus is re-segmented, and so on until the vocabulary holds
    `vocab_size` pieces (alphabet included) or no pair reaches `min_count` (a piece seen in a single
    row would be trained on that row alone). `weights[i]` is how often sequence i occurs
    (its item's training rows: the paper learns SPM from the item distribution, so head items earn
    long pieces and tail items are split). Ties break on the pieces' order, so the result is
    deterministic. A piece is a run of consecutive levels, anchored at its first level (the position
    of a code is its level), as SentencePiece pieces are runs of characters."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    weights = np.ones(len(codes)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(weights) != len(codes):
        raise ValueError(f"{len(weights)} weights for {len(codes)} code sequences")
    # equal sequences are merged with their weights summed: the corpus is the distinct codes
    corpus: dict[tuple[int, ...], float] = defaultdict(float)
    for code, weight in zip(codes, weights):
        if weight > 0 and len(code):
            corpus[tuple(int(c) for c in code)] += float(weight)
    sequences = sorted(corpus)
    counts = [corpus[s] for s in sequences]
    segmented: list[list[Piece]] = [[(level, (c,)) for level, c in enumerate(s)] for s in sequences]
    pieces: set[Piece] = {p for seq in segmented for p in seq}
    n_alphabet = len(pieces)

    pair_weight: dict[tuple[Piece, Piece], float] = defaultdict(float)
    where: dict[tuple[Piece, Piece], set[int]] = defaultdict(set)  # pair -> sequences holding it

    changed: set[tuple[Piece, Piece]] = set()  # pairs whose weight moved during the current merge

    def account(i: int, sign: float) -> None:
        seq = segmented[i]
        for a, b in zip(seq, seq[1:]):
            pair_weight[(a, b)] += sign * counts[i]
            changed.add((a, b))
            if sign > 0:
                where[(a, b)].add(i)

    for i in range(len(sequences)):
        account(i, 1.0)
    # a lazy max-heap over (weight, pair); stale entries are skipped when popped
    heap = [(-w, pair) for pair, w in pair_weight.items()]
    heapq.heapify(heap)
    merges = 0
    while len(pieces) < vocab_size and heap:
        negative, pair = heapq.heappop(heap)
        weight = pair_weight.get(pair, 0.0)
        if weight <= 0 or abs(weight + negative) > 1e-9:
            continue  # stale: the pair's weight changed since it was pushed
        if weight < min_count:
            break
        (first, left), (_, right) = pair
        merged: Piece = (first, left + right)
        changed.clear()
        for i in sorted(where.pop(pair, ())):
            seq = segmented[i]
            if not any(a == pair[0] and b == pair[1] for a, b in zip(seq, seq[1:])):
                continue
            account(i, -1.0)
            out, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == pair[0] and seq[j + 1] == pair[1]:
                    out.append(merged)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            segmented[i] = out
            account(i, 1.0)
        pair_weight.pop(pair, None)
        changed.discard(pair)
        for other in sorted(changed):  # re-queue every pair whose weight went up or down
            if pair_weight.get(other, 0.0) > 0:
                heapq.heappush(heap, (-pair_weight[other], other))
        if merged not in pieces:
            pieces.add(merged)
            merges += 1
    return PieceVocabulary(frozenset(pieces), n_alphabet, merges)


def semantic_tokens(codes: Sequence[Sequence[int]], scheme: str, *, train_weight: Sequence[float] | None = None,
                    spm_vocab: int = 1000) -> tuple[list[list[str]], dict]:
    """Token strings of every item's code sequence under `scheme`, and a description.

    `codes[i]`: item i's semantic ID (codes < 0 are padding and dropped). For `spm` the pieces are
    learnt from the items with `train_weight > 0` only (their training rows as weights): the
    vocabulary, like every other fitted statistic, comes from the training rows."""
    sequences = [[int(c) for c in row if int(c) >= 0] for row in codes]
    if scheme in NGRAM_SCHEMES:
        return [ngram_tokens(s, scheme) for s in sequences], {}
    if scheme != "spm":
        raise ValueError(f"token scheme {scheme!r} is not one of {', '.join(TOKEN_SCHEMES)}")
    weight = np.ones(len(sequences)) if train_weight is None else np.asarray(train_weight, dtype=np.float64)
    vocabulary = learn_pieces(sequences, weight, spm_vocab)
    tokens = [vocabulary.tokens(s) for s in sequences]
    lengths = [len(vocabulary.segment(s)) for s, w in zip(sequences, weight) if w > 0 and s]
    return tokens, {"pieces": len(vocabulary.pieces), "alphabet": vocabulary.n_alphabet, "merges": vocabulary.n_merges,
                    "mean_pieces_per_training_item": round(float(np.mean(lengths)), 4) if lengths else 0.0}


def parse_codes(column: Sequence, name: str = "codes") -> list[list[int]]:
    """Precomputed semantic IDs from an item-table column: each cell a sequence of ints, or a string
    of them separated by spaces, commas or dashes ("12 5 33"); a missing cell is an empty ID."""
    out = []
    for row, cell in enumerate(column):
        if cell is None or (isinstance(cell, float) and np.isnan(cell)) or (isinstance(cell, str) and not cell.strip()):
            out.append([])
            continue
        parts = cell.replace(",", " ").replace("-", " ").split() if isinstance(cell, str) else list(np.ravel(cell))
        try:
            out.append([int(p) for p in parts])
        except (TypeError, ValueError):
            raise ValueError(f"{name}: row {row} holds {cell!r}, not a sequence of integer codes") from None
    return out


__all__ = ["NGRAM_SCHEMES", "PieceVocabulary", "TOKEN_SCHEMES", "hash_buckets", "learn_pieces", "ngram_tokens",
           "parse_codes", "piece_token", "semantic_tokens", "stable_hash"]
