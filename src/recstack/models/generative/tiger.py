"""TIGER: generative retrieval over semantic IDs (Rajput et al., "Recommender Systems with
Generative Retrieval", NeurIPS 2023), with the projection-head decoding of Lite-LLM4Rec (Wang et
al., "Rethinking Large Language Model Architectures for Sequential Recommendations", 2024).

Every item is a code tuple (c_1, ..., c_L) from an item tokenizer (`indexing`: residual k-means or
RQ-VAE semantic IDs, or Hua et al.'s indexing schemes). An encoder reads a hashed user token and
the codes of the user's last `max_seq_len` items; a causal decoder is teacher-forced to emit the
next item's code, loss = - sum_l log p(c_l | c_<l, history), a softmax over level l's tokens, the
output layer tied to the token embeddings (T5).
- decoding="beam": `top_k` is beam search constrained by the codes' `PrefixTrie`
  (`kernels/beam.py`), history items banned at the token completing them; `score` is the exact
  sum of per-level log-probabilities of every item's code.
- decoding="projection" (Lite-LLM4Rec): score(i) = <W h, sum_l E[c_l(i)]>, h the decoder state
  after BOS, trained with a full-catalogue softmax (weight `projection_weight`); `top_k` ranks by it.
Deviations: a small pre-norm torch.nn.Transformer (2 + 2 layers, d 128) trained with Adam, not
TIGER's T5 (4 + 4, Adagrad); residual k-means 3 x 64 on L2-normalised collaborative SVD vectors
by default. Decoding details, defaults and the ml-100k record: docs/models/tiger.md.
"""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt, confloat, model_validator

from recstack.data.dataset import Dataset
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.evaluate.evaluator import block_size_for
from recstack.models.generative.codes import stable_item_vectors
from recstack.models.generative.semantic_ids import PAD, PrefixTrie, TokenizerError, build_tokenizer
from recstack.models.kernels.beam import constrained_beam_search
from recstack.models.neural import TorchRecommender, TrainingFields, module_arrays
from recstack.models.protocol import ModelConfig, ScoresFromHistory, check_fitted, check_trainable, gather_items
from recstack.topk import top_k_items
from recstack.train.options import FitOptions
from recstack.train.sequences import window_rows
from recstack.train.trainer import resolve_device

_PAD_TOKEN, _BOS = 0, 1  # flat token ids: 0 padding, 1 begin-of-code / empty user, 2.. code tokens, then users
_FIRST_CODE = 2
_EMBEDDING_SCHEMES = {"rqvae", "rkmeans"}  # tokenizers that quantise item vectors
_TOKENIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "rkmeans": {"codebook_size": 64},
    "rqvae": {"codebook_size": 64, "verbose": False},
}
_BEAM_ROWS = 4096  # decoder sequences per pass in beam search and exact scoring


class TIGERConfig(ModelConfig, TrainingFields):
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
    batch_size: PositiveInt = 256
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training before
    early_stopping_patience: PositiveInt | None = 5
    eval_every: PositiveInt = 5
    score_batch_size: PositiveInt = 256  # users per encoder pass when scoring

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
    Only the beams still extending a prefix are decoded, `_BEAM_ROWS` sequences a pass; their
    log-probabilities add up in float64.
    """
    memory, pad = net.encode(encoder_tokens)
    device = memory.device
    offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(level_sizes)]), dtype=torch.int64, device=device)

    def log_probs(level: int, prefix: torch.Tensor, open_: np.ndarray) -> torch.Tensor:
        n_users, beams = open_.shape
        lo, hi = int(offsets[level]), int(offsets[level + 1])
        out = torch.zeros((n_users * beams, hi - lo), dtype=torch.float64, device=device)
        rows = np.flatnonzero(open_.ravel())
        if len(rows):
            rows_t = torch.from_numpy(rows).to(device)
            decoded = prefix.reshape(n_users * beams, level)[rows_t]
            decoded = torch.where(decoded >= 0, decoded + offsets[:level] + _FIRST_CODE, _PAD_TOKEN)
            inputs = torch.cat([torch.full((len(rows), 1), _BOS, dtype=torch.int64, device=device), decoded], dim=1)
            user_of_row = rows // beams
            for start in range(0, len(rows), _BEAM_ROWS):
                part = slice(start, start + _BEAM_ROWS)
                who = torch.from_numpy(user_of_row[part]).to(device)
                states = net.decode(inputs[part], memory[who], pad[who])
                lp = net.level_log_probs(states[:, -1:], first_level=level)[:, 0]
                out[rows_t[part]] = lp[:, lo:hi].double()
        return out.reshape(n_users, beams, hi - lo)

    return constrained_beam_search(log_probs, trie, level_sizes, len(memory), width, device=device, banned=banned)


class _Decoder:
    """Scoring and beam search on one set of network weights (the fitted model's, or, during
    training, the copy the trainer validates)."""

    def __init__(self, net: _Net, codes: np.ndarray, level_sizes: list[int], config: TIGERConfig,
                 weights: Any = None) -> None:
        self.net, self.codes, self.level_sizes, self.config = net, codes, level_sizes, config
        self.weights = weights  # the `weights_` the network was built from
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


# ---- the recommender ----------------------------------------------------------------------------
class TIGER(ScoresFromHistory, TorchRecommender):
    """Encoder-decoder transformer that generates the next item's semantic ID."""

    Config = TIGERConfig

    def __init__(self, config: TIGERConfig | None = None) -> None:
        super().__init__(config)
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
        vectors = stable_item_vectors(train.matrix(), c.embedding_dim, c.seed)
        # unit rows: rare items have tiny factors, which residual quantisers lump into one code
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray((vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32))

    def _tokenize(self, train: Interactions, options: FitOptions | None = None):
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
            return tokenizer.fit(embeddings, interactions=train, item_table=table, options=options)
        except TokenizerError as exc:
            raise RecstackError(f"TIGER indexing {name!r} could not be fitted: {exc}. Item tables reach TIGER "
                                "through model.use_dataset(dataset) (recstack run calls it)") from None

    # -- training --------------------------------------------------------------------------------
    def fit(self, train: Interactions, valid: Interactions | None = None, *,
            options: FitOptions | None = None) -> Self:
        """Tokenize the items (before seeding: an RQ-VAE trains with its own seed), then train the
        encoder-decoder with the shared loop."""
        check_trainable("TIGER", train)
        if not (train.user_counts() >= 2).any():
            raise RecstackError("TIGER needs at least one user with two or more training events "
                                "(one to read, one to predict); check the filters and split")
        self._tokenizer = self._tokenize(train, options)
        try:
            return super().fit(train, valid, options=options)
        finally:
            del self._tokenizer

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        tokenizer = self._tokenizer
        codes, level_sizes = tokenizer.codes_, list(tokenizer.level_sizes_)
        self._fixed = {"codes_": codes, "level_sizes_": level_sizes,
                       "tokenizer_stats_": _json_safe(tokenizer.stats())}
        self._train, self._rng = train, rng
        self._counts = train.user_counts()
        self._learners = np.flatnonzero(self._counts >= 2).astype(np.int64)
        self._item_tokens = _item_tokens(codes, level_sizes)
        self._n_codes = int(sum(level_sizes))
        return _Net(self._item_tokens, level_sizes, c)

    def batches(self):
        c, train, rng, counts = self.config, self._train, self._rng, self._counts
        if c.samples_per_user is None:  # every event after a user's first is a target
            targets = np.flatnonzero(np.arange(len(train)) > train.indptr[train.user.astype(np.int64)])
        else:
            users = np.repeat(self._learners, c.samples_per_user)
            offset = rng.integers(1, counts[users])  # position within the user's events, >= 1
            targets = train.indptr[users] + offset
        targets = rng.permutation(targets)
        for start in range(0, len(targets), c.batch_size):
            rows = targets[start:start + c.batch_size]
            users = train.user[rows].astype(np.int64)
            window = rows[:, None] - c.max_seq_len + np.arange(c.max_seq_len)[None, :]
            window = np.where(window >= train.indptr[users][:, None], window, -1)
            items = np.where(window >= 0, train.item[np.maximum(window, 0)].astype(np.int64), -1)
            tokens = _encoder_tokens(self._item_tokens, items, _user_tokens(users, self._n_codes, c.n_user_buckets))
            yield tokens, train.item[rows].astype(np.int64)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        tokens, target = batch
        memory, pad = module.encode(tokens)
        states = module.decode(module.decoder_inputs(target), memory, pad)
        n_tokens = (module.item_tokens[target] != _PAD_TOKEN).sum()  # padded tails are not predicted
        loss = -module.code_log_prob(states, target).sum() / n_tokens
        head_weight = self.config.head_weight
        if head_weight > 0:
            loss = loss + head_weight * F.cross_entropy(module.project(states[:, 0]), target)
        return loss

    def trainer_settings(self) -> dict[str, Any]:
        return {"optimizer": "adam"}

    def export(self, module: _Net) -> dict[str, Any]:
        return {**self._fixed, "weights_": module_arrays(module)}

    # -- inference -------------------------------------------------------------------------------
    def _fitted_decoder(self) -> _Decoder:
        check_fitted(self, "codes_", "level_sizes_", "weights_")
        decoder = getattr(self, "_decoder", None)
        if decoder is None or decoder.weights is not self.weights_ or decoder.codes is not self.codes_:
            codes = np.asarray(self.codes_, dtype=np.int64)
            self.codes_ = codes
            level_sizes = [int(s) for s in self.level_sizes_]
            with torch.random.fork_rng(devices=[]):  # the throw-away initialisation leaves the global RNG alone
                net = _Net(_item_tokens(codes, level_sizes), level_sizes, self.config)
            net.load_state_dict({key: torch.from_numpy(np.asarray(value)) for key, value in self.weights_.items()})
            net = net.to(resolve_device(self.config.device)).eval()
            decoder = self._decoder = _Decoder(net, codes, level_sizes, self.config, self.weights_)
        return decoder

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        """Projection-head scores ("projection") or exact code log-probabilities ("beam") of every item."""
        return self._fitted_decoder().score(users, history, items)

    def beam_search(self, users: np.ndarray, history: Interactions, k: int, *, mask_history: bool = True,
                    beam_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Trie-constrained beam search: (items (B, k), log-probabilities (B, k)); -1 / -inf pad short lists."""
        return self._fitted_decoder().beam_search(users, history, k, mask_history=mask_history, beam_size=beam_size)

    def top_k(self, users: np.ndarray, history: Interactions, k: int, *,
              mask_history: bool) -> tuple[np.ndarray, np.ndarray]:
        """The k best items per user: beam search for decoding="beam"; for "projection", every item
        ranked by `score` (the history masked when asked), as the evaluator ranks a scorer."""
        if self.config.decoding == "beam":
            return self.beam_search(users, history, k, mask_history=mask_history)
        users = np.asarray(users, dtype=np.int64)
        n_items = len(self._fitted_decoder().codes)
        out_items = np.full((len(users), k), -1, dtype=np.int64)
        out_scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        matrix = history.matrix() if mask_history else None
        block = block_size_for(n_items)
        for start in range(0, len(users), block):
            batch = users[start:start + block]
            scores = np.array(self.score(batch, history), dtype=np.float32)
            if matrix is not None:
                rows = matrix[batch]
                scores[np.repeat(np.arange(len(batch)), np.diff(rows.indptr)), rows.indices] = -np.inf
            idx, values = top_k_items(scores, k)
            idx[~np.isfinite(values) & (values < 0)] = -1  # a masked item
            out_items[start:start + len(batch), :idx.shape[1]] = idx
            out_scores[start:start + len(batch), :idx.shape[1]] = values
        return out_items, out_scores

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
