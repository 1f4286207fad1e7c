"""ColaRec (Wang et al., "Content-Based Collaborative Generation for Recommender Systems", CIKM 2024,
arXiv 2403.18480; authors' code: github.com/Junewang0614/ColaRec).

A sequence-to-sequence recommender that writes the generative identifier (GID) of the next item.
GIDs: a collaborative model (LightGCN by default) is trained first; its item embeddings are
clustered by hierarchical k-means (`HierarchicalKMeansTokenizer`, registered as "hkmeans"), plus
the item's number within its leaf. The encoder reads the user as the content of their items
([USER], then [ATOM_i, words of i's text] per item, [EOS]); the decoder emits the GID. Losses per
(u, i), negative j, same-leaf item a: L = gen_weight (L_rec + L_index(i) + L_index(j)) +
bpr_weight L_bpr + cl_weight L_c, with L_rec / L_index cross-entropies of the GID given user / item
content, L_bpr = -log sigmoid(<h_u, h_i> - <h_u, h_j>) and L_c = -log sigmoid(<h_i, h_a> - <h_i, h_j>)
on encoder states at EOS. AdamW (weight decay 0.01), gradient clipping at 1.
`top_k` is beam search constrained to the GID trie (`kernels/beam.py`), over-generating k +
|history| beams to drop history items; `score` is the exact log P(GID_i | user content).
Deviations: a small encoder-decoder trained from scratch on a word vocabulary of the item texts
instead of fine-tuning T5-small; plain (not size-constrained) k-means; no interacting-user
embedding on item-side inputs. Details, defaults and the ml-100k record: docs/models/colarec.md.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from typing import Any, Literal, Mapping, Self, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveInt, confloat, model_validator

from recstack.data.dataset import Dataset
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.generative.semantic_ids import (
    ItemTokenizer,
    PrefixTrie,
    as_embeddings,
    disambiguate,
    require_sklearn,
)
from recstack.models.kernels.beam import constrained_beam_search
from recstack.models.kernels.side import rows_for_items
from recstack.models.neural import TorchRecommender, TrainingFields, module_arrays
from recstack.models.protocol import (
    ModelConfig,
    ScoresFromHistory,
    check_fitted,
    check_trainable,
    gather_items,
    make_config,
)
from recstack.train.options import FitOptions
from recstack.train.sampling import EpochPairs, UniformNegativeSampler, positive_keys
from recstack.train.sequences import last_items
from recstack.train.trainer import resolve_device

# encoder word ids below N_SPECIAL are structural tokens; words of the item texts follow
PAD, USER, ITEM, EOS, ATOM = 0, 1, 2, 3, 4
N_SPECIAL = 5
_WORD = re.compile(r"[a-z0-9]+")


# ---- GIDs: hierarchical k-means on collaborative item embeddings ------------------------------------
class HierarchicalKMeansConfig(ModelConfig):
    n_clusters: int = Field(default=32, ge=2)  # clusters per level
    n_levels: PositiveInt = 2  # cluster levels; the code has one more token (the number within the leaf)
    n_init: PositiveInt = 10  # k-means restarts per clustering (the reference's 10)
    max_iter: PositiveInt = 300


class HierarchicalKMeansTokenizer(ItemTokenizer):
    """ColaRec's GIDs: k-means, then k-means inside each cluster, `n_levels` times, plus the item's
    number within its leaf. Every code has n_levels + 1 tokens."""

    Config = HierarchicalKMeansConfig

    def fit(self, embeddings: Any = None, *, interactions: Interactions | None = None,
            item_table: Mapping[str, np.ndarray] | None = None, options: FitOptions | None = None) -> Self:
        c = self.config
        cluster = require_sklearn("ColaRec's hierarchical k-means")
        x = as_embeddings(embeddings, "collaborative item embeddings")
        n = len(x)
        base = np.zeros((n, c.n_levels), dtype=np.int64)
        groups = [np.arange(n)]
        for level in range(c.n_levels):
            next_groups = []
            for number, members in enumerate(groups):  # one k-means per cluster of the level above
                k = min(c.n_clusters, len(members))
                labels = np.zeros(len(members), dtype=np.int64)
                if k > 1:
                    with warnings.catch_warnings():  # "fewer distinct points than clusters" in small groups
                        warnings.simplefilter("ignore")
                        labels = cluster.KMeans(n_clusters=k, n_init=c.n_init, max_iter=c.max_iter,
                                                random_state=(c.seed + 7919 * level + number) % 2**32
                                                ).fit(x[members]).labels_.astype(np.int64)
                base[members, level] = labels
                next_groups.extend(members[labels == value] for value in np.unique(labels))
            groups = next_groups
        codes, rate, largest = disambiguate(base)
        self._set_codes(codes, [c.n_clusters] * c.n_levels + [largest], n_base_levels=c.n_levels,
                        collision_rate=rate, max_group_size=largest)
        return self


# ---- the network --------------------------------------------------------------------------------
class ColaRecConfig(ModelConfig, TrainingFields):
    # item content
    max_words: PositiveInt = 16  # words of an item text read per item
    min_word_count: PositiveInt = 2  # a word enters the vocabulary when that many item texts have it
    # GIDs
    cf_model: Literal["lightgcn", "bpr"] = "lightgcn"  # the collaborative model whose item embeddings are clustered
    cf_params: dict[str, Any] = Field(default_factory=dict)  # its settings (its own defaults otherwise)
    n_clusters: int = Field(default=32, ge=2)
    n_cluster_levels: PositiveInt = 2  # GID length is n_cluster_levels + 1
    # encoder-decoder
    embedding_size: PositiveInt = 64
    n_layers: PositiveInt = 2  # encoder layers, and as many decoder layers
    n_heads: PositiveInt = 2
    ffn_size: PositiveInt = 256
    dropout: confloat(ge=0.0, lt=1.0) = 0.1
    n_user_items: PositiveInt = 10  # items sampled from the user's other training items per example
    max_items: PositiveInt = 20  # most recent history items read at scoring
    # losses
    gen_weight: NonNegativeFloat = 0.08  # recommendation + item-indexing cross-entropies
    bpr_weight: NonNegativeFloat = 1.0  # user-item ranking loss on encoder representations
    cl_weight: NonNegativeFloat = 0.1  # item-item contrastive loss (same-leaf item vs negative)
    # training
    weight_decay: NonNegativeFloat = 0.01
    batch_size: PositiveInt = 128
    pairs_per_epoch: PositiveInt | None = None  # training interactions drawn per epoch (None: all, once each)
    epochs: PositiveInt = 60
    early_stopping_patience: PositiveInt | None = 5
    # generation
    n_beams: PositiveInt = 100  # beam width (at least k + |history| to leave k unseen items)
    beam_budget: PositiveInt = 32768  # users x beams decoded at once
    score_batch_size: PositiveInt = 64

    @model_validator(mode="after")
    def _consistent(self) -> "ColaRecConfig":
        if self.embedding_size % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide embedding_size ({self.embedding_size})")
        if "seed" in self.cf_params:
            raise ValueError("cf_params must not set seed: the collaborative model uses ColaRec's seed")
        return self


class _Attention(torch.nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = torch.nn.Linear(d, d)
        self.key_value = torch.nn.Linear(d, 2 * d)
        self.out = torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        batch, length, d = x.shape
        h = self.heads
        q = self.query(x).view(batch, length, h, d // h).transpose(1, 2)
        k, v = self.key_value(memory).view(batch, memory.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).reshape(batch, length, d))


class _Layer(torch.nn.Module):
    """A pre-norm transformer layer: self-attention, cross-attention (decoder only), feed-forward."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, cross: bool) -> None:
        super().__init__()
        self.self_norm, self.self_attention = torch.nn.LayerNorm(d), _Attention(d, heads, dropout)
        self.cross = cross
        if cross:
            self.cross_norm, self.cross_attention = torch.nn.LayerNorm(d), _Attention(d, heads, dropout)
        self.ffn_norm = torch.nn.LayerNorm(d)
        self.ffn = torch.nn.Sequential(torch.nn.Linear(d, ffn), torch.nn.GELU(), torch.nn.Dropout(dropout),
                                       torch.nn.Linear(ffn, d))
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder: x (B, T, d), key mask (B, 1, 1, T). Decoder: x (B * N, L, d), N decoded sequences
        per user sharing that user's memory (B, T, d): causal self-attention within each sequence,
        cross-attention of all B x N x L positions to their user's memory in one call."""
        y = self.self_norm(x)
        x = x + self.drop(self.self_attention(y, y, mask, causal=self.cross))
        if self.cross:
            flat = x.reshape(memory.shape[0], -1, x.shape[-1])  # (B, N * L, d)
            flat = flat + self.drop(self.cross_attention(self.cross_norm(flat), memory, memory_mask))
            x = flat.reshape(x.shape)
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class _Net(torch.nn.Module):
    def __init__(self, c: ColaRecConfig, n_items: int, n_words: int, level_sizes: Sequence[int],
                 block_length: int) -> None:
        super().__init__()
        d = c.embedding_size
        self.level_sizes = [int(s) for s in level_sizes]
        offsets = np.concatenate([[1], 1 + np.cumsum(self.level_sizes)[:-1]])  # 0 is BOS
        self.register_buffer("offsets", torch.as_tensor(offsets, dtype=torch.int64), persistent=False)
        self.words = torch.nn.Embedding(N_SPECIAL + n_words, d, padding_idx=PAD)
        self.atoms = torch.nn.Embedding(n_items + 1, d, padding_idx=0)  # item index + 1
        self.slots = torch.nn.Embedding(block_length + 1, d)  # 0 prompt/EOS, 1 ATOM, 2.. words
        self.encoder = torch.nn.ModuleList(
            _Layer(d, c.n_heads, c.ffn_size, c.dropout, cross=False) for _ in range(c.n_layers))
        self.encoder_norm = torch.nn.LayerNorm(d)
        self.codes = torch.nn.Embedding(1 + sum(self.level_sizes), d)  # BOS, then one table per level
        self.positions = torch.nn.Embedding(len(self.level_sizes), d)
        self.decoder = torch.nn.ModuleList(
            _Layer(d, c.n_heads, c.ffn_size, c.dropout, cross=True) for _ in range(c.n_layers))
        self.decoder_norm = torch.nn.LayerNorm(d)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(d, size) for size in self.level_sizes)
        self.drop = torch.nn.Dropout(c.dropout)
        for module in self.modules():
            if isinstance(module, torch.nn.Embedding):
                torch.nn.init.normal_(module.weight, std=0.02)
                if module.padding_idx is not None:
                    module.weight.data[module.padding_idx] = 0.0

    def encode(self, words: torch.Tensor, atoms: torch.Tensor, slots: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) inputs -> encoder states (B, T, d) and the key mask (B, 1, 1, T)."""
        mask = (words != PAD)[:, None, None, :]
        x = self.drop(self.words(words) + self.atoms(atoms) + self.slots(slots))
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def decode(self, memory: torch.Tensor, mask: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """prefix (B, N, l) GID values of levels 0..l-1 (N sequences per user) -> hidden states
        (B, N, l + 1, d), position p predicting level p."""
        batch, n, length = prefix.shape
        tokens = torch.cat([torch.zeros(batch, n, 1, dtype=torch.int64, device=prefix.device),
                            prefix + self.offsets[:length]], dim=2)
        x = self.drop(self.codes(tokens) + self.positions.weight[:length + 1])
        x = x.reshape(batch * n, length + 1, -1)
        for layer in self.decoder:
            x = layer(x, memory=memory, memory_mask=mask)
        return self.decoder_norm(x).reshape(batch, n, length + 1, -1)

    def level_log_probs(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        return torch.log_softmax(self.heads[level](hidden).float(), dim=-1)

    def code_log_prob(self, memory: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, N, L) -> log P(code | memory), (B, N)."""
        hidden = self.decode(memory, mask, codes[:, :, :-1])
        total = torch.zeros(codes.shape[:2], device=codes.device)
        for level in range(codes.shape[2]):
            lp = self.level_log_probs(hidden[:, :, level], level)
            total = total + lp.gather(-1, codes[:, :, level:level + 1]).squeeze(-1)
        return total

    def code_loss(self, memory: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Mean token cross-entropy of codes (B, L) given memory (one sequence per row)."""
        hidden = self.decode(memory, mask, codes[:, None, :-1])[:, 0]
        losses = [F.cross_entropy(self.heads[level](hidden[:, level]).float(), codes[:, level])
                  for level in range(codes.shape[1])]
        return torch.stack(losses).mean()


def _bpr(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid((anchor * positive).sum(-1) - (anchor * negative).sum(-1)).mean()


# ---- inputs -------------------------------------------------------------------------------------
def _tokenize(texts: Sequence[str], max_words: int, min_count: int) -> tuple[np.ndarray, int]:
    """(n_items, max_words) word ids (N_SPECIAL.., 0 = padding) and the vocabulary size. Words are
    lower-case alphanumeric runs; the vocabulary keeps words of at least `min_count` texts, most
    frequent first (ties alphabetical), so it is a function of the texts alone."""
    tokenized = [_WORD.findall(str(text).lower()) for text in texts]
    counts = Counter(word for words in tokenized for word in set(words))
    vocabulary = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    lookup = {word: N_SPECIAL + index for index, word in enumerate(vocabulary)}
    out = np.zeros((len(tokenized), max_words), dtype=np.int64)
    for row, words in enumerate(tokenized):
        ids = [lookup[w] for w in words if w in lookup][:max_words]
        out[row, :len(ids)] = ids
    filled = np.flatnonzero((out != PAD).any(axis=0))
    return out[:, :filled[-1] + 1] if len(filled) else out[:, :1], len(vocabulary)


def _inputs(item_words: np.ndarray, items: np.ndarray, prompt: int) -> tuple[np.ndarray, ...]:
    """Encoder inputs for rows of item indices `items` (B, m), -1 = none: [prompt, (ATOM_i, words of i)
    for each item, EOS], padding squeezed out. Returns words, atoms, slots (B, T) and the EOS column (B,)."""
    items = np.asarray(items, dtype=np.int64)
    batch, m = items.shape
    width = item_words.shape[1]
    present = items >= 0
    safe = np.where(present, items, 0)
    block_words = np.concatenate([np.full((batch, m, 1), ATOM), item_words[safe]], axis=2)
    block_words[~present] = PAD
    block_atoms = np.zeros_like(block_words)
    block_atoms[:, :, 0] = np.where(present, items + 1, 0)
    block_slots = np.broadcast_to(np.arange(1, width + 2), block_words.shape)
    column = np.zeros((batch, 1), dtype=np.int64)
    words = np.concatenate([np.full((batch, 1), prompt), block_words.reshape(batch, -1), np.full((batch, 1), EOS)], 1)
    atoms = np.concatenate([column, block_atoms.reshape(batch, -1), column], 1)
    slots = np.concatenate([column, block_slots.reshape(batch, -1), column], 1)
    order = np.argsort(words == PAD, axis=1, kind="stable")  # real tokens first, in their order
    lengths = (words != PAD).sum(axis=1)
    keep = int(lengths.max())
    order = order[:, :keep]
    words, atoms, slots = (np.take_along_axis(a, order, axis=1) for a in (words, atoms, slots))
    slots = np.where(words == PAD, 0, slots)
    return words, atoms, slots, lengths - 1


def _recent_items(history: Interactions, users: np.ndarray, max_items: int) -> np.ndarray:
    """(B, max_items) the users' most recent history items, newest first, -1 = none."""
    return last_items(history, users, max_items)[:, ::-1] - 1


# ---- generation and scoring (shared by the fitted model and the trainer's validation) --------------
def _encode_users(net: _Net, item_words: np.ndarray, items: np.ndarray, device) -> tuple[torch.Tensor, ...]:
    words, atoms, slots, _ = _inputs(item_words, items, USER)
    return net.encode(*(torch.from_numpy(a).to(device) for a in (words, atoms, slots)))


def _beam_search(net: _Net, trie: PrefixTrie, memory: torch.Tensor, mask: torch.Tensor,
                 level_sizes: Sequence[int], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Constrained beam search: (B, width) items and GID log-probabilities, best first (-1 / -inf pad).
    Every beam is decoded at every level, all users' beams in one pass (float32 scores)."""

    def log_probs(level: int, prefix: torch.Tensor, open_: np.ndarray) -> torch.Tensor:
        hidden = net.decode(memory, mask, prefix)[:, :, level]
        return net.level_log_probs(hidden, level)

    return constrained_beam_search(log_probs, trie, level_sizes, memory.shape[0], width, device=memory.device)


def _top_k(net: _Net, trie: PrefixTrie, level_sizes: Sequence[int], item_words: np.ndarray,
           c: ColaRecConfig, users: np.ndarray, history: Interactions, k: int,
           mask_history: bool = True) -> tuple[np.ndarray, np.ndarray]:
    users = np.asarray(users, dtype=np.int64)
    n_items = item_words.shape[0]
    if history.n_items != n_items:
        raise RecstackError(f"the history has {history.n_items} items but ColaRec was fitted on {n_items}; "
                            "use interactions that share the training item vocabulary")
    if not 1 <= k <= n_items:
        raise RecstackError(f"k must be between 1 and the catalogue size {n_items}, got {k}")
    device = next(net.parameters()).device
    matrix = history.matrix()
    seen = positive_keys(matrix) if mask_history else np.empty(0, dtype=np.int64)
    n_seen = np.diff(matrix.indptr)[users] if mask_history else np.zeros(len(users), dtype=np.int64)
    out_items = np.full((len(users), k), -1, dtype=np.int64)
    out_scores = np.full((len(users), k), -np.inf, dtype=np.float32)
    order = np.argsort(n_seen, kind="stable")  # users with similar history sizes share a beam width
    start = 0
    while start < len(order):
        width = min(n_items, max(c.n_beams, k + int(n_seen[order[start]])))
        stop = start + 1
        while stop < len(order) and stop - start < c.score_batch_size:
            grown = min(n_items, max(c.n_beams, k + int(n_seen[order[stop]])))
            if (stop - start + 1) * grown > c.beam_budget:
                break
            width, stop = grown, stop + 1
        rows = order[start:stop]
        with torch.no_grad():
            memory, mask = _encode_users(net, item_words, _recent_items(history, users[rows], c.max_items), device)
            items, values = _beam_search(net, trie, memory, mask, level_sizes, width)
        keys = users[rows, None] * n_items + np.maximum(items, 0)
        where = np.minimum(np.searchsorted(seen, keys), max(len(seen) - 1, 0))
        drop = (items < 0) | ((seen[where] == keys) if len(seen) else False)
        values = np.where(drop, -np.inf, values)
        best = np.argsort(-values, axis=1, kind="stable")[:, :k]  # beams are sorted: keeps their order
        picked, picked_values = np.take_along_axis(items, best, 1), np.take_along_axis(values, best, 1)
        picked[~np.isfinite(picked_values)] = -1
        out_items[rows, :picked.shape[1]] = picked
        out_scores[rows, :picked.shape[1]] = picked_values
        start = stop
    return out_items, out_scores


def _score(net: _Net, codes: np.ndarray, item_words: np.ndarray, c: ColaRecConfig, users: np.ndarray,
           history: Interactions, items: np.ndarray | None) -> np.ndarray:
    users = np.asarray(users, dtype=np.int64)
    n_items = len(codes)
    if history.n_items != n_items:
        raise RecstackError(f"the history has {history.n_items} items but ColaRec was fitted on {n_items}; "
                            "use interactions that share the training item vocabulary")
    device = next(net.parameters()).device
    all_codes = torch.from_numpy(codes).to(device)
    out = np.empty((len(users), n_items), dtype=np.float32)
    chunk = max(1, min(c.score_batch_size, c.beam_budget // n_items))
    for start in range(0, len(users), chunk):
        part = users[start:start + chunk]
        with torch.no_grad():
            memory, mask = _encode_users(net, item_words, _recent_items(history, part, c.max_items), device)
            log_p = net.code_log_prob(memory, mask, all_codes[None].expand(len(part), -1, -1))
        out[start:start + len(part)] = log_p.float().cpu().numpy()
    return gather_items(out, items).astype(np.float32, copy=False) if items is not None else out


# ---- the recommender ----------------------------------------------------------------------------
class ColaRec(ScoresFromHistory, TorchRecommender):
    """Content-based collaborative generation: user content in, the next item's collaborative GID out."""

    Config = ColaRecConfig

    def __init__(self, config: ColaRecConfig | None = None) -> None:
        super().__init__(config)
        self._item_ids: np.ndarray | None = None
        self._item_texts: np.ndarray | None = None
        self._cache: tuple | None = None

    # ---- side information ---------------------------------------------------------------------
    def set_item_texts(self, item_ids: Sequence | np.ndarray, texts: Sequence[str]) -> Self:
        """Item texts, `texts[r]` describing the external item id `item_ids[r]`."""
        ids = np.asarray(item_ids)
        texts = np.asarray([str(t) for t in texts], dtype=object)
        if ids.ndim != 1 or len(ids) != len(texts):
            raise RecstackError(f"ColaRec item texts need one text per id; got {ids.shape} ids and {len(texts)} texts")
        self._item_ids, self._item_texts = ids, texts
        return self

    def use_dataset(self, dataset: Dataset) -> Self:
        """Read the dataset's item texts (title, year, genres for MovieLens); `recstack run` calls this."""
        from recstack.data.features import item_texts

        if not dataset.item_table:
            raise RecstackError(
                f"ColaRec needs item texts, but dataset {dataset.name!r} has no item side table (titles etc.); "
                "load data with item metadata (e.g. ml-100k), or give texts with model.set_item_texts(item_ids, texts)")
        return self.set_item_texts(dataset.interactions.items.ids, item_texts(dataset))

    def _aligned_texts(self, train: Interactions) -> np.ndarray:
        if self._item_texts is None:
            raise RecstackError(
                "ColaRec reads item content: call model.use_dataset(dataset) (a Dataset with an item side table; "
                "`recstack run` does this) or model.set_item_texts(item_ids, texts) before fit")
        rows = rows_for_items(self._item_ids, train.items.ids, model="ColaRec", what="texts")
        return self._item_texts[rows]

    # ---- training -----------------------------------------------------------------------------
    def _collaborative_embeddings(self, train: Interactions, valid: Interactions | None,
                                  options: FitOptions | None) -> np.ndarray:
        from recstack.models import build

        c = self.config
        params = {"verbose": c.verbose, "device": c.device, **c.cf_params, "seed": c.seed}
        return build(c.cf_model, params).fit(train, valid, options=options).item_factors_

    def fit(self, train: Interactions, valid: Interactions | None = None, *,
            options: FitOptions | None = None) -> Self:
        """The GIDs first (the collaborative model trains with its own seed), then the
        encoder-decoder with the shared loop."""
        c = self.config
        check_trainable("ColaRec", train)
        texts = self._aligned_texts(train)
        item_words, n_words = _tokenize(texts, c.max_words, c.min_word_count)
        tokenizer = HierarchicalKMeansTokenizer(make_config(
            HierarchicalKMeansConfig, {"n_clusters": c.n_clusters, "n_levels": c.n_cluster_levels, "seed": c.seed}))
        tokenizer.fit(self._collaborative_embeddings(train, valid, options))
        self._gids = (item_words, n_words, tokenizer)
        try:
            return super().fit(train, valid, options=options)
        finally:
            del self._gids

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        item_words, n_words, tokenizer = self._gids
        codes, level_sizes = tokenizer.codes_, list(tokenizer.level_sizes_)
        self._fixed = {"codes_": codes, "level_sizes_": level_sizes, "item_words_": item_words,
                       "n_words_": n_words, "gid_stats_": tokenizer.stats()}
        self._rng, self._item_words = rng, item_words
        self._matrix = matrix = train.matrix()
        net = _Net(c, train.n_items, n_words, level_sizes, item_words.shape[1] + 1)
        self._pairs = EpochPairs.from_matrix(matrix, c.batch_size, rng)
        self._sampler = UniformNegativeSampler(matrix, rng)
        # items sharing a GID leaf (all tokens but the last): the augmented positives of L_c
        leaf = np.unique(codes[:, :-1], axis=0, return_inverse=True)[1].reshape(-1)
        self._by_leaf = by_leaf = np.argsort(leaf, kind="stable")
        self._leaf_start = np.searchsorted(leaf[by_leaf], leaf)
        self._leaf_size = np.bincount(leaf)[leaf]
        self._rank_in_leaf = np.empty(len(leaf), dtype=np.int64)
        self._rank_in_leaf[by_leaf] = np.arange(len(leaf)) - np.searchsorted(leaf[by_leaf], leaf[by_leaf])
        self._codes_t = torch.from_numpy(codes)
        self._terms: list[list[torch.Tensor]] = []  # this epoch's loss terms, per batch
        self._epochs: list[dict[str, float]] = []  # their means, per finished epoch
        return net

    def _close_epoch(self) -> None:
        if self._terms:
            self._epochs.append(self._mean_terms())
            self._terms.clear()

    def _mean_terms(self) -> dict[str, float]:
        stacked = torch.stack([torch.stack(t) for t in self._terms]).mean(0).tolist()
        return dict(zip(("rec", "index", "bpr", "cl"), stacked))

    def batches(self):
        c, rng, matrix, pairs = self.config, self._rng, self._matrix, self._pairs
        leaf_size, by_leaf, leaf_start, rank_in_leaf = self._leaf_size, self._by_leaf, self._leaf_start, \
            self._rank_in_leaf
        self._close_epoch()
        drawn = 0
        negatives = self._sampler.sample(pairs.users, 1)[:, 0]
        # a random other member of the positive's leaf (the item itself when it is alone there)
        shift = rng.integers(1, np.maximum(leaf_size[pairs.items], 2))
        for index, users, items in pairs.indexed():
            if c.pairs_per_epoch is not None:  # a random subset per epoch: validation more often
                drawn += len(index)
                if drawn - len(index) >= c.pairs_per_epoch:
                    break
            # the user's other training items, a random sample of at most n_user_items
            lo, degree = matrix.indptr[users], np.diff(matrix.indptr)[users]
            column = index - lo  # the target's place in the user's CSR row
            width = int(degree.max())
            draw = rng.random((len(users), width))
            cols = np.arange(width)[None, :]
            draw[(cols >= degree[:, None]) | (cols == column[:, None])] = np.inf
            chosen = np.argsort(draw, axis=1, kind="stable")[:, :c.n_user_items]
            valid_pick = np.take_along_axis(draw, chosen, 1) < np.inf
            context = np.where(valid_pick, matrix.indices[np.minimum(lo[:, None] + chosen, matrix.nnz - 1)], -1)
            size = leaf_size[items]
            augmented = by_leaf[leaf_start[items] + (rank_in_leaf[items] + shift[index]) % size]
            neg = negatives[index]
            user_in = _inputs(self._item_words, context, USER)[:3]
            item_in = _inputs(self._item_words, np.stack([items, neg, augmented]).reshape(-1, 1), ITEM)[:3]
            yield (*user_in, *item_in, items, neg)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        c = self.config
        u_words, u_atoms, u_slots, i_words, i_atoms, i_slots, items, neg = batch
        n = len(items)
        user_memory, user_mask = module.encode(u_words, u_atoms, u_slots)
        item_memory, item_mask = module.encode(i_words, i_atoms, i_slots)
        pos_codes, neg_codes = self._codes_t.to(items.device)[items], self._codes_t.to(items.device)[neg]
        rec = module.code_loss(user_memory, user_mask, pos_codes)
        index = (module.code_loss(item_memory[:n], item_mask[:n], pos_codes)
                 + module.code_loss(item_memory[n:2 * n], item_mask[n:2 * n], neg_codes))
        user_last = (u_words != PAD).sum(1) - 1
        h_user = user_memory[torch.arange(n, device=items.device), user_last]
        item_last = (i_words != PAD).sum(1) - 1
        h_items = item_memory[torch.arange(3 * n, device=items.device), item_last]
        h_pos, h_neg, h_aug = h_items[:n], h_items[n:2 * n], h_items[2 * n:]
        bpr = _bpr(h_user, h_pos, h_neg)
        cl = _bpr(h_pos, h_aug, h_neg)
        self._terms.append([rec.detach(), index.detach(), bpr.detach(), cl.detach()])
        return c.gen_weight * (rec + index) + c.bpr_weight * bpr + c.cl_weight * cl

    def trainer_settings(self) -> dict[str, Any]:
        return {"optimizer": "adamw", "weight_decay": self.config.weight_decay, "max_grad_norm": 1.0}

    def export(self, module: _Net) -> dict[str, Any]:
        # the last epoch's terms are still open (an epoch closes when the next one starts)
        loss_terms = self._epochs + ([self._mean_terms()] if self._terms else [])
        return {**self._fixed, "weights_": module_arrays(module), "loss_terms_": loss_terms}

    # ---- scoring ------------------------------------------------------------------------------
    def _fitted(self) -> tuple[_Net, PrefixTrie]:
        check_fitted(self, "weights_", "codes_", "item_words_")
        cache = getattr(self, "_cache", None)
        if cache is None or cache[2] is not self.weights_:
            with torch.random.fork_rng(devices=[]):  # the throw-away initialisation leaves the global RNG alone
                net = _Net(self.config, len(self.codes_), int(self.n_words_), self.level_sizes_,
                           self.item_words_.shape[1] + 1)
            net.load_state_dict({key: torch.from_numpy(np.asarray(value)) for key, value in self.weights_.items()})
            net = net.to(resolve_device(self.config.device))
            cache = (net.eval(), PrefixTrie(self.codes_), self.weights_)
            self._cache = cache
        return cache[0], cache[1]

    def top_k(self, users: np.ndarray, history: Interactions, k: int, *,
              mask_history: bool) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) items by constrained beam search over the GIDs, and their GID log-probabilities;
        -1 / -inf where fewer than k items are found. With `mask_history` the history items are
        left out (by over-generating k + |history| beams)."""
        net, trie = self._fitted()
        return _top_k(net, trie, self.level_sizes_, self.item_words_, self.config, users, history, k, mask_history)

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        """Exact log P(GID_i | the user's recent content) for every item (or the candidates)."""
        net, _ = self._fitted()
        return _score(net, self.codes_, self.item_words_, self.config, users, history, items)
