"""TIGER: generative retrieval over semantic IDs (Rajput et al., "Recommender Systems with
Generative Retrieval", NeurIPS 2023), with the projection-head decoding of Lite-LLM4Rec (Wang et
al., "Rethinking Large Language Model Architectures for Sequential Recommendations", 2024).

Every item is a short code tuple (c_1, ..., c_L) from an item tokenizer (`indexing`: the RQ-VAE or
residual k-means semantic IDs of `semantic_ids.py` / `rqvae.py`, or Hua et al.'s random,
sequential, collaborative, semantic and hybrid indexing of `item_indexing.py`). A user is written
as one hashed user-id token (TIGER hashes user ids into 2,000 tokens) followed by the code tokens of
their last `max_seq_len` items, oldest first. A transformer encoder reads that sequence; a causal
decoder, started from a BOS token, is teacher-forced to emit the next item's code:

    loss = - sum_l log p(c_l | c_<l, history),   p(. | ...) a softmax over the level-l tokens only

(level l's token values are a token range of their own; the output layer is tied to the token
embeddings as in T5). Codes of Hua's collaborative/hybrid schemes have different lengths; their
padded tail is neither read nor predicted (codes are prefix-free, so no end token is needed).

Decoding (`decoding`):
- "beam" (TIGER): beam search constrained by the tokenizer's `PrefixTrie`, so only codes of real
  items are ever emitted; `top_k(users, history, k)` returns the items and their log-probabilities
  (the evaluator uses `top_k` when a model has it). History masking: the user's history items are
  removed while decoding, at the token that would complete their code (that candidate gets -inf),
  and the search keeps `beam_size` beams (default 2k) where k items are asked for, so the k
  returned items are new ones and a beam is never spent on an item already consumed. Where fewer
  than k items survive (tiny catalogues), the list is padded with -1 / -inf. `top_k(...,
  mask_history=False)` keeps history items (the evaluator's call does not pass the flag).
  `score(users, history)` gives the exact quantity beam search approximates, the sum of the
  per-level log-probabilities of every item's code under teacher forcing (n_items decoder passes
  per user: exact but costly, used where a caller needs every item, e.g. a restricted item pool).
- "projection" (Lite-LLM4Rec's observation that beam search is often unnecessary): the decoder's
  first state h (after BOS) is projected, z = W h, and scored against every item's code embedding
  e_i = sum_l E[c_l(i)] (the same token embeddings the model reads and writes), score(i) = <z, e_i>,
  all items in one matrix product. The head is trained with a full-catalogue softmax cross-entropy
  added to the generative loss with weight `projection_weight` (default 0 for "beam", 1 for
  "projection"), so the projection model still decodes with `beam_search`. Such a model has no
  `top_k` (the attribute raises AttributeError), so the evaluator ranks all items through `score`
  and masks history as for any other model.

Item embeddings for the semantic tokenizers (`item_embeddings`): "collaborative" (default, needs no
side data): truncated SVD of the training user-item matrix, item rows of V sqrt(S)
L2-normalised; "text": the item
texts of the dataset handed to `use_dataset(dataset)` (as `recstack run` does), encoded with
TF-IDF + SVD ("tfidf", offline and cheap) or all-MiniLM-L6-v2 ("minilm", the paper uses Sentence-T5).
Semantic and hybrid indexing read the dataset's item table (genres) through `use_dataset` too.
Side data is matched to items by external id.

Training examples: per epoch, `samples_per_user` target events drawn uniformly from each user's
training events after their first (None: every such event once), the input being the up to
`max_seq_len` events before the target. TIGER trains on all; sampling keeps an epoch cheap on CPU.

Architecture and defaults: TIGER's model is T5-like with 4 + 4 layers, d_model 128, 6 heads,
MLP 1,024, dropout 0.1, 20 history items, 3 x 256 codes + collision token, Adagrad. The defaults
here are the brief's small model: 2 encoder + 2 decoder pre-norm layers (torch.nn.Transformer
layers), d 128, 4 heads, feed-forward 512, dropout 0.1, 20 history items, Adam lr 1e-3, and
residual k-means with 3 x 64 codes on L2-normalised collaborative SVD vectors (3 x 256 leaves most
fine codewords with one item or none on a catalogue of a few thousand; without the normalisation
rare items' near-zero vectors collapse into shared codes: 53% of ml-100k items collided, 11% with it).
These defaults were NOT tuned: a CPU build allows one small run per variant (TIGER's own size took
5.5 s per step of 256 on one core, 35 minutes an epoch; `examples/tiger_paper_ml100k.yaml` is for a
GPU). On ml-100k (leave-last-one-out, seed 2020) `examples/generative_ml100k.yaml` (d 64, 2 heads,
10 history items, 4 targets per user per epoch, lr 3e-3, early stopping with patience 3
validations every 5 epochs) gives valid / test NDCG@10 (test for reference only; beam width 2k = 40
at the evaluator's depth 20): residual k-means 0.088 / 0.082 (above EASE's 0.083 / 0.073), Hua
hybrid 0.087 / 0.067, Hua collaborative 0.081 / 0.063, projection head (residual k-means codes)
0.081 / 0.068, RQ-VAE on MiniLM texts 0.069 / 0.064, Hua semantic 0.061 / 0.057, Hua sequential
0.060 / 0.046 (at the 80-epoch cap), Hua random 0.037 / 0.033, against SASRec 0.115 / 0.090; 4-9
minutes per TIGER fit on one core, best epochs 25-70.

Fitted state is numpy: the item codes `codes_`, `level_sizes_` and the network weights as one flat
float32 vector `weights_` (rebuilt into the network on first use after `load`); scoring needs torch.
"""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, confloat, model_validator

from recstack.data.dataset import Dataset
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.generative.semantic_ids import PAD, PrefixTrie, TokenizerError, build_tokenizer
from recstack.models.protocol import ModelConfig, SaveLoad, check_fitted, gather_items
from recstack.train.sequences import window_rows
from recstack.train.trainer import Trainer, TrainerConfig, seed_everything

_PAD_TOKEN, _BOS = 0, 1  # flat token ids: 0 padding, 1 begin-of-code / empty user, 2.. code tokens, then users
_FIRST_CODE = 2
_EMBEDDING_SCHEMES = {"rqvae", "rkmeans"}  # tokenizers that quantise item vectors
_TOKENIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "rkmeans": {"codebook_size": 64},
    "rqvae": {"codebook_size": 64, "verbose": False},
}
_BEAM_ROWS = 4096  # decoder sequences per pass in beam search and exact scoring


class TIGERConfig(ModelConfig):
    indexing: str = "rkmeans"  # a tokenizer of semantic_ids.TOKENIZERS, or "package.module:Class"
    tokenizer: dict[str, Any] | None = None  # its parameters (None: rkmeans/rqvae use codebook_size 64)
    item_embeddings: Literal["collaborative", "text"] = "collaborative"  # what rqvae/rkmeans quantise
    text_encoder: Literal["tfidf", "minilm"] = "tfidf"  # for item_embeddings="text"
    embedding_dim: PositiveInt = 64  # width of the collaborative (SVD) or TF-IDF item vectors
    embedding_size: PositiveInt = 128  # d_model
    n_layers: PositiveInt = 2  # encoder layers, and as many decoder layers
    n_heads: PositiveInt = 4
    ffn_size: PositiveInt = 512
    dropout: confloat(ge=0.0, lt=1.0) = 0.1
    max_seq_len: PositiveInt = 20  # history items the encoder reads
    n_user_buckets: NonNegativeInt = 2000  # hashed user-id tokens (0: none)
    decoding: Literal["beam", "projection"] = "beam"
    projection_weight: NonNegativeFloat | None = None  # projection head's loss weight (None: 0 beam, 1 projection)
    beam_size: PositiveInt | None = None  # beams per user in top_k (None: 2k; never fewer than k)
    samples_per_user: PositiveInt | None = 8  # training targets per user per epoch (None: all events)
    learning_rate: PositiveFloat = 1e-3
    batch_size: PositiveInt = 256
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training before
    early_stopping_patience: PositiveInt | None = 5
    eval_every: PositiveInt = 5
    valid_metric: str = "NDCG@10"
    score_batch_size: PositiveInt = 256  # users per encoder pass when scoring
    device: str = "auto"
    verbose: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> "TIGERConfig":
        if self.embedding_size % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide embedding_size ({self.embedding_size})")
        if self.decoding == "projection" and self.projection_weight == 0:
            raise ValueError("decoding='projection' needs projection_weight > 0 (the head is trained by that loss); "
                             "leave it unset for the default 1.0")
        return self

    @property
    def head_weight(self) -> float:
        if self.projection_weight is not None:
            return float(self.projection_weight)
        return 1.0 if self.decoding == "projection" else 0.0


# ---- the network ---------------------------------------------------------------------------------
class _Net(torch.nn.Module):
    def __init__(self, item_tokens: np.ndarray, level_sizes: list[int], c: TIGERConfig) -> None:
        super().__init__()
        d, code_length = c.embedding_size, item_tokens.shape[1]
        self.n_codes = int(sum(level_sizes))
        self.n_user_buckets = c.n_user_buckets
        self.token = torch.nn.Embedding(_FIRST_CODE + self.n_codes + c.n_user_buckets, d, padding_idx=_PAD_TOKEN)
        torch.nn.init.normal_(self.token.weight, std=d ** -0.5)
        with torch.no_grad():
            self.token.weight[_PAD_TOKEN] = 0.0
        self.encoder_position = torch.nn.Embedding(1 + c.max_seq_len * code_length, d)
        self.decoder_position = torch.nn.Embedding(code_length, d)
        for table in (self.encoder_position, self.decoder_position):
            torch.nn.init.normal_(table.weight, std=0.02)

        def encoder_layer():
            return torch.nn.TransformerEncoderLayer(d, c.n_heads, c.ffn_size, c.dropout, batch_first=True,
                                                    norm_first=True)

        def decoder_layer():
            return torch.nn.TransformerDecoderLayer(d, c.n_heads, c.ffn_size, c.dropout, batch_first=True,
                                                    norm_first=True)

        self.encoder = torch.nn.TransformerEncoder(encoder_layer(), c.n_layers, norm=torch.nn.LayerNorm(d),
                                                   enable_nested_tensor=False)
        self.decoder = torch.nn.TransformerDecoder(decoder_layer(), c.n_layers, norm=torch.nn.LayerNorm(d))
        self.projection = torch.nn.Linear(d, d)
        self.dropout = c.dropout
        offsets = np.concatenate([[0], np.cumsum(level_sizes)])
        # allowed[l, v]: flat code token v belongs to level l (a position's softmax is over its level)
        allowed = np.zeros((code_length, self.n_codes), dtype=bool)
        for level in range(code_length):
            allowed[level, offsets[level]:offsets[level + 1]] = True
        self.register_buffer("level_allowed", torch.from_numpy(allowed), persistent=False)
        self.register_buffer("item_tokens", torch.from_numpy(item_tokens), persistent=False)
        self.register_buffer("causal", torch.nn.Transformer.generate_square_subsequent_mask(code_length),
                             persistent=False)

    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) left-padded encoder tokens -> memory (B, T, d) and its padding mask."""
        pad = tokens == _PAD_TOKEN
        positions = self.encoder_position.weight[-tokens.shape[1]:]  # counted from the end (left padding)
        x = F.dropout(self.token(tokens) + positions, self.dropout, self.training)
        return self.encoder(x, src_key_padding_mask=pad), pad

    def decode(self, inputs: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor) -> torch.Tensor:
        """(N, t) decoder tokens (BOS first) -> states (N, t, d)."""
        length = inputs.shape[1]
        x = F.dropout(self.token(inputs) + self.decoder_position.weight[:length], self.dropout, self.training)
        return self.decoder(x, memory, tgt_mask=self.causal[:length, :length], memory_key_padding_mask=memory_pad)

    def level_log_probs(self, states: torch.Tensor, first_level: int = 0) -> torch.Tensor:
        """(N, t, d) states -> (N, t, n_codes) log-probabilities, position j over level first_level + j."""
        logits = states @ self.token.weight[_FIRST_CODE:_FIRST_CODE + self.n_codes].T  # tied output layer
        allowed = self.level_allowed[first_level:first_level + states.shape[1]]
        return torch.log_softmax(logits.masked_fill(~allowed, -torch.inf), dim=-1)

    def decoder_inputs(self, items: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: BOS, then the item's code without its last token."""
        codes = self.item_tokens[items]
        bos = torch.full((len(items), 1), _BOS, dtype=codes.dtype, device=codes.device)
        return torch.cat([bos, codes[:, :-1]], dim=1)

    def code_log_prob(self, states: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """log p(code of item | history) from teacher-forced states (N, L, d): (N,)."""
        codes = self.item_tokens[items]
        valid = codes != _PAD_TOKEN
        logp = self.level_log_probs(states)
        picked = logp.gather(-1, (codes - _FIRST_CODE).clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return torch.where(valid, picked, torch.zeros_like(picked)).sum(-1)

    def item_matrix(self) -> torch.Tensor:
        """(n_items, d): each item's code embedding, the sum of its tokens' embeddings (padding adds 0)."""
        return self.token(self.item_tokens).sum(1)

    def project(self, first_state: torch.Tensor) -> torch.Tensor:
        return self.projection(first_state) @ self.item_matrix().T


# ---- inputs --------------------------------------------------------------------------------------
def _item_tokens(codes: np.ndarray, level_sizes: list[int]) -> np.ndarray:
    """(n_items, L) flat token ids (0 where the code is padded)."""
    offsets = np.concatenate([[0], np.cumsum(level_sizes)])[:-1]
    return np.where(codes == PAD, _PAD_TOKEN, codes + offsets[None, :] + _FIRST_CODE).astype(np.int64)


def _user_tokens(users: np.ndarray, n_codes: int, n_buckets: int) -> np.ndarray:
    if n_buckets == 0:
        return np.full(len(users), _BOS, dtype=np.int64)  # a constant start token: no sequence is empty
    bucket = (np.asarray(users, dtype=np.int64) * 2654435761 + 97) % 2**32 % n_buckets  # Knuth's multiplicative hash
    return _FIRST_CODE + n_codes + bucket


def _encoder_tokens(item_tokens: np.ndarray, items: np.ndarray, user_tokens: np.ndarray) -> np.ndarray:
    """(B, S) history items (-1 = none, oldest first) -> (B, T) left-padded tokens: user token, then codes."""
    batch, length = items.shape
    codes = np.where(items[..., None] >= 0, item_tokens[np.maximum(items, 0)], _PAD_TOKEN).reshape(batch, -1)
    tokens = np.concatenate([user_tokens[:, None], codes], axis=1)
    order = np.argsort(tokens != _PAD_TOKEN, axis=1, kind="stable")  # padding first, tokens keep their order
    tokens = np.take_along_axis(tokens, order, axis=1)
    filled = np.flatnonzero((tokens != _PAD_TOKEN).any(axis=0))
    return np.ascontiguousarray(tokens[:, filled[0]:])


def _history_items(history: Interactions, users: np.ndarray, max_seq_len: int) -> np.ndarray:
    rows = window_rows(history.indptr, np.asarray(users, dtype=np.int64), max_seq_len)
    return np.where(rows >= 0, history.item[np.maximum(rows, 0)].astype(np.int64), -1)


# ---- decoding ------------------------------------------------------------------------------------
def _logprob_scores(net: _Net, encoder_tokens: torch.Tensor) -> np.ndarray:
    """Exact teacher-forced log p(code of i | history) for every item: (B, n_items)."""
    memory, pad = net.encode(encoder_tokens)
    n_items = len(net.item_tokens)
    all_items = torch.arange(n_items, device=memory.device)
    inputs = net.decoder_inputs(all_items)
    out = np.empty((len(memory), n_items), dtype=np.float32)
    step = max(1, _BEAM_ROWS)
    for b in range(len(memory)):
        for start in range(0, n_items, step):
            part = all_items[start:start + step]
            m = len(part)
            states = net.decode(inputs[start:start + step], memory[b:b + 1].expand(m, -1, -1),
                                pad[b:b + 1].expand(m, -1))
            out[b, start:start + m] = net.code_log_prob(states, part).float().cpu().numpy()
    return out


def _beam_search(net: _Net, trie: PrefixTrie, level_sizes: list[int], encoder_tokens: torch.Tensor,
                 width: int, banned: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Trie-constrained beam search for a block of users: (items (B, width), log-probs (B, width)).

    `banned`: sorted keys user_row * n_items + item of items that may not be emitted (history).
    Beams that have completed an item (codes of different lengths) stay in the beam with their score
    and compete with longer prefixes (a prefix's log-probability bounds those of its completions).
    """
    memory, pad = net.encode(encoder_tokens)
    n_users, device = len(memory), memory.device
    n_items, depth = trie.n_items, trie.depth
    offsets = np.concatenate([[0], np.cumsum(level_sizes)])
    scores = np.full((n_users, 1), 0.0)
    nodes = np.zeros((n_users, 1), dtype=np.int64)  # trie node at the current depth; -1 = dead
    items = np.full((n_users, 1), -1, dtype=np.int64)  # completed item, -1 while still a prefix
    prefix = np.full((n_users, 1, 0), 0, dtype=np.int64)  # flat tokens decoded so far
    for level in range(depth):
        beams = nodes.shape[1]
        open_ = (items < 0) & (nodes >= 0)
        size = level_sizes[level]
        cand = np.full((n_users, beams, size + 1), -np.inf)
        cand[:, :, size] = np.where(items >= 0, scores, -np.inf)  # a finished beam carries over
        rows = np.flatnonzero(open_.ravel())
        if len(rows):
            decoded = prefix.reshape(n_users * beams, level)[rows]
            inputs = np.concatenate([np.full((len(rows), 1), _BOS), decoded], axis=1)
            user_of_row = rows // beams
            logp = np.empty((len(rows), size), dtype=np.float64)
            for start in range(0, len(rows), _BEAM_ROWS):
                part = slice(start, start + _BEAM_ROWS)
                who = torch.from_numpy(user_of_row[part]).to(device)
                states = net.decode(torch.from_numpy(inputs[part]).to(device), memory[who], pad[who])
                lp = net.level_log_probs(states[:, -1:], first_level=level)[:, 0]
                logp[part] = lp[:, offsets[level]:offsets[level + 1]].double().cpu().numpy()
            flat_nodes = nodes.ravel()[rows]
            allowed = trie.allowed_mask(level, flat_nodes, size)
            value = np.where(allowed, scores.ravel()[rows, None] + logp, -np.inf)
            if banned is not None and len(banned):
                r, token = np.nonzero(allowed)
                done = trie.item_at(level + 1, trie.step(level, flat_nodes[r], token))
                hit = done >= 0
                keys = user_of_row[r[hit]] * n_items + done[hit]
                where = np.minimum(np.searchsorted(banned, keys), len(banned) - 1)
                is_banned = banned[where] == keys
                value[r[hit][is_banned], token[hit][is_banned]] = -np.inf
            cand.reshape(-1, size + 1)[rows, :size] = value
        flat = cand.reshape(n_users, -1)
        keep = min(width, flat.shape[1])
        best = np.argsort(-flat, axis=1, kind="stable")[:, :keep]  # ties: lower beam, then lower token
        new_scores = np.take_along_axis(flat, best, axis=1)
        parent, token = best // (size + 1), best % (size + 1)
        parent_nodes = np.take_along_axis(nodes, parent, axis=1)
        parent_items = np.take_along_axis(items, parent, axis=1)
        stays = token == size
        alive = np.isfinite(new_scores)
        child = trie.step(level, parent_nodes, np.where(stays, 0, token))
        nodes = np.where(stays | ~alive, np.where(alive, parent_nodes, -1), child)
        items = np.where(stays, parent_items, np.where(alive, trie.item_at(level + 1, np.maximum(child, 0)), -1))
        items[~alive] = -1
        new_token = np.where(stays | ~alive, _PAD_TOKEN, token + offsets[level] + _FIRST_CODE)
        prefix = np.concatenate([np.take_along_axis(prefix, parent[..., None], axis=1), new_token[..., None]], axis=2)
        scores = np.where(alive, new_scores, -np.inf)
    scores = np.where(items >= 0, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")
    items, scores = np.take_along_axis(items, order, axis=1), np.take_along_axis(scores, order, axis=1)
    items[~np.isfinite(scores)] = -1
    return items, scores.astype(np.float32)


class _Decoder:
    """Scoring and beam search on a network's current weights (shared by training and the fitted model)."""

    def __init__(self, net: _Net, codes: np.ndarray, level_sizes: list[int], config: TIGERConfig) -> None:
        self.net, self.codes, self.level_sizes, self.config = net, codes, level_sizes, config
        self.trie = PrefixTrie(codes)
        self.item_tokens = _item_tokens(codes, level_sizes)
        self.n_codes = int(sum(level_sizes))

    def _check(self, history: Interactions) -> None:
        if history.n_items != len(self.codes):
            raise RecstackError(f"the history has {history.n_items} items but TIGER was fitted on {len(self.codes)}; "
                                "score with interactions that share the training item vocabulary")

    def encoder_tokens(self, users: np.ndarray, history: Interactions) -> torch.Tensor:
        items = _history_items(history, users, self.config.max_seq_len)
        tokens = _encoder_tokens(self.item_tokens, items, _user_tokens(users, self.n_codes,
                                                                       self.config.n_user_buckets))
        return torch.from_numpy(tokens).to(self.net.token.weight.device)

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        self._check(history)
        users = np.asarray(users, dtype=np.int64)
        out = np.empty((len(users), len(self.codes)), dtype=np.float32)
        chunk = self.config.score_batch_size
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(users), chunk):
                    part = slice(start, start + chunk)
                    tokens = self.encoder_tokens(users[part], history)
                    if self.config.decoding == "projection":
                        memory, pad = self.net.encode(tokens)
                        bos = torch.full((len(tokens), 1), _BOS, dtype=torch.long, device=tokens.device)
                        first = self.net.decode(bos, memory, pad)[:, 0]
                        out[part] = self.net.project(first).float().cpu().numpy()
                    else:
                        out[part] = _logprob_scores(self.net, tokens)
        finally:
            self.net.train(was_training)
        return gather_items(out, items) if items is not None else out

    def beam_search(self, users: np.ndarray, history: Interactions, k: int, *, mask_history: bool = True,
                    beam_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        self._check(history)
        users = np.asarray(users, dtype=np.int64)
        n_items = len(self.codes)
        if not 1 <= k <= n_items:
            raise RecstackError(f"k={k} must be between 1 and the catalogue size ({n_items})")
        width = max(k, beam_size or self.config.beam_size or 2 * k)
        out_items = np.full((len(users), k), -1, dtype=np.int64)
        out_scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        chunk = max(1, min(self.config.score_batch_size, _BEAM_ROWS // width))
        matrix = history.matrix() if mask_history else None
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(users), chunk):
                    batch = users[start:start + chunk]
                    banned = None
                    if matrix is not None:
                        rows = matrix[batch]
                        rows.sort_indices()
                        banned = np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(rows.indptr)) * n_items \
                            + rows.indices
                    found, values = _beam_search(self.net, self.trie, self.level_sizes,
                                                 self.encoder_tokens(batch, history), width, banned)
                    m = min(k, found.shape[1])
                    out_items[start:start + len(batch), :m] = found[:, :m]
                    out_scores[start:start + len(batch), :m] = values[:, :m]
        finally:
            self.net.train(was_training)
        return out_items, out_scores


class _LiveScorer:
    """What the trainer validates: beam search (top_k) for "beam", all-item scores for "projection"."""

    def __init__(self, decoder: _Decoder) -> None:
        self.decoder = decoder

    def score(self, users, history, items=None):
        return self.decoder.score(users, history, items)

    @property
    def top_k(self):
        if self.decoder.config.decoding != "beam":
            raise AttributeError("top_k")
        return self.decoder.beam_search


# ---- the recommender ----------------------------------------------------------------------------
class TIGER(SaveLoad):
    """Encoder-decoder transformer that generates the next item's semantic ID."""

    Config = TIGERConfig

    def __init__(self, config: TIGERConfig | None = None) -> None:
        self.config = config or TIGERConfig()
        self._dataset_items: np.ndarray | None = None
        self._item_table: dict[str, np.ndarray] | None = None
        self._text_vectors: np.ndarray | None = None
        self._decoder: _Decoder | None = None

    # -- side data -------------------------------------------------------------------------------
    def use_dataset(self, dataset: Dataset) -> Self:
        """Keep the dataset's item table (semantic / hybrid indexing) and, for item_embeddings="text",
        encode its item texts (recstack run calls this before fit)."""
        c = self.config
        self._dataset_items = np.asarray(dataset.interactions.items.ids)
        self._item_table = dict(dataset.item_table) if dataset.item_table else None
        if c.item_embeddings == "text" and self._uses_embeddings():
            if not dataset.item_table:
                raise RecstackError(f"TIGER with item_embeddings='text' needs item texts, but dataset {dataset.name!r} "
                                    "has no item side table; use item_embeddings='collaborative'")
            from recstack.data.features import SentenceEncoder, TfidfSVDEncoder, encode_texts, item_texts

            encoder = SentenceEncoder() if c.text_encoder == "minilm" else TfidfSVDEncoder(dim=c.embedding_dim,
                                                                                           seed=c.seed)
            self._text_vectors = encode_texts(item_texts(dataset), encoder, cache=True, progress=False)
        return self

    def _uses_embeddings(self) -> bool:
        return self.config.indexing.lower() in _EMBEDDING_SCHEMES or ":" in self.config.indexing

    def _aligned_rows(self, train: Interactions, what: str) -> np.ndarray:
        lookup = {key: row for row, key in enumerate(self._dataset_items.tolist())}
        rows = np.array([lookup.get(key, -1) for key in train.items.ids.tolist()], dtype=np.int64)
        if (rows < 0).any():
            raise RecstackError(f"TIGER has no {what} for {int((rows < 0).sum())} training item(s), e.g. "
                                f"{train.items.ids[rows < 0][0]!r}; "
                                "use_dataset must get the dataset the split came from")
        return rows

    def _item_embeddings(self, train: Interactions) -> np.ndarray:
        c = self.config
        if c.item_embeddings == "text":
            if self._text_vectors is None:
                raise RecstackError("TIGER with item_embeddings='text' needs the item texts before fit: call "
                                    "model.use_dataset(dataset) (recstack run does), "
                                    "or use item_embeddings='collaborative'")
            return self._text_vectors[self._aligned_rows(train, "item text")]
        from sklearn.utils.extmath import randomized_svd

        matrix = train.matrix().astype(np.float32)
        rank = max(1, min(c.embedding_dim, min(matrix.shape) - 1))
        _, s, vt = randomized_svd(matrix, rank, random_state=c.seed % 2**32)
        vectors = vt.T * np.sqrt(s)[None, :]
        # unit rows: rare items have tiny factors, which residual quantisers lump into one code
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray((vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32))

    def _tokenize(self, train: Interactions):
        c = self.config
        name = c.indexing
        params = {**_TOKENIZER_DEFAULTS.get(name.lower(), {}), "seed": c.seed, **(c.tokenizer or {})}
        tokenizer = build_tokenizer(name, params)
        table = None
        if self._item_table is not None:
            rows = self._aligned_rows(train, "item side-table row")
            table = {key: np.asarray(column)[rows] for key, column in self._item_table.items()}
        embeddings = self._item_embeddings(train) if self._uses_embeddings() else None
        try:
            return tokenizer.fit(embeddings, interactions=train, item_table=table)
        except TokenizerError as exc:
            raise RecstackError(f"TIGER indexing {name!r} could not be fitted: {exc}. Item tables reach TIGER "
                                "through model.use_dataset(dataset) (recstack run calls it)") from None

    # -- training --------------------------------------------------------------------------------
    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self:
        c = self.config
        if len(train) == 0:
            raise RecstackError("TIGER cannot be fitted on empty training data; check the filters and split")
        counts = train.user_counts()
        learners = np.flatnonzero(counts >= 2).astype(np.int64)
        if not len(learners):
            raise RecstackError("TIGER needs at least one user with two or more training events "
                                "(one to read, one to predict); check the filters and split")
        tokenizer = self._tokenize(train)
        codes, level_sizes = tokenizer.codes_, list(tokenizer.level_sizes_)
        seed_everything(c.seed)
        rng = np.random.default_rng(c.seed)
        item_tokens = _item_tokens(codes, level_sizes)
        net = _Net(item_tokens, level_sizes, c)
        decoder = _Decoder(net, codes, level_sizes, c)
        n_codes = decoder.n_codes
        head_weight = c.head_weight

        def batches():
            if c.samples_per_user is None:  # every event after a user's first is a target
                targets = np.flatnonzero(np.arange(len(train)) > train.indptr[train.user.astype(np.int64)])
            else:
                users = np.repeat(learners, c.samples_per_user)
                offset = rng.integers(1, counts[users])  # position within the user's events, >= 1
                targets = train.indptr[users] + offset
            targets = rng.permutation(targets)
            for start in range(0, len(targets), c.batch_size):
                rows = targets[start:start + c.batch_size]
                users = train.user[rows].astype(np.int64)
                window = rows[:, None] - c.max_seq_len + np.arange(c.max_seq_len)[None, :]
                window = np.where(window >= train.indptr[users][:, None], window, -1)
                items = np.where(window >= 0, train.item[np.maximum(window, 0)].astype(np.int64), -1)
                tokens = _encoder_tokens(item_tokens, items, _user_tokens(users, n_codes, c.n_user_buckets))
                yield tokens, train.item[rows].astype(np.int64)

        def batch_loss(module: _Net, batch) -> torch.Tensor:
            tokens, target = batch
            memory, pad = module.encode(tokens)
            states = module.decode(module.decoder_inputs(target), memory, pad)
            n_tokens = (module.item_tokens[target] != _PAD_TOKEN).sum()  # padded tails are not predicted
            loss = -module.code_log_prob(states, target).sum() / n_tokens
            if head_weight > 0:
                loss = loss + head_weight * F.cross_entropy(module.project(states[:, 0]), target)
            return loss

        trainer = Trainer(TrainerConfig.from_model(c, optimizer="adam"))
        history = trainer.fit(net, batch_loss, batches, _LiveScorer(decoder), train=train, valid=valid)
        best_epoch = trainer.best_epoch if trainer.best_epoch is not None else len(history)
        net.eval()
        weights = torch.nn.utils.parameters_to_vector(net.parameters()).detach().to("cpu", torch.float32).numpy()
        self._replace_fitted({"codes_": codes, "level_sizes_": level_sizes, "weights_": weights.copy(),
                              "history_": history, "best_epoch_": best_epoch,
                              "tokenizer_stats_": _json_safe(tokenizer.stats())})
        self._decoder = decoder
        return self

    # -- inference -------------------------------------------------------------------------------
    def _fitted_decoder(self) -> _Decoder:
        check_fitted(self, "codes_", "level_sizes_", "weights_")
        if self._decoder is None or self._decoder.codes is not self.codes_:
            codes = np.asarray(self.codes_, dtype=np.int64)
            self.codes_ = codes
            level_sizes = [int(s) for s in self.level_sizes_]
            net = _Net(_item_tokens(codes, level_sizes), level_sizes, self.config)
            torch.nn.utils.vector_to_parameters(torch.from_numpy(np.asarray(self.weights_, dtype=np.float32)),
                                                net.parameters())
            net.eval()
            self._decoder = _Decoder(net, codes, level_sizes, self.config)
        return self._decoder

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        """Projection-head scores ("projection") or exact code log-probabilities ("beam") of every item."""
        return self._fitted_decoder().score(users, history, items)

    def beam_search(self, users: np.ndarray, history: Interactions, k: int, *, mask_history: bool = True,
                    beam_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Trie-constrained beam search: (items (B, k), log-probabilities (B, k)); -1 / -inf pad short lists."""
        return self._fitted_decoder().beam_search(users, history, k, mask_history=mask_history, beam_size=beam_size)

    @property
    def top_k(self):
        """Beam-search top-k (decoding="beam" only; a projection model ranks every item through `score`)."""
        if self.config.decoding != "beam":
            raise AttributeError(f"{type(self).__name__}.top_k: decoding='projection' ranks every item through score()")
        return self.beam_search

    @property
    def trie(self) -> PrefixTrie:
        return self._fitted_decoder().trie


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


__all__ = ["TIGER", "TIGERConfig"]
