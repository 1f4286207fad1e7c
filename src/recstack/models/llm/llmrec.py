"""LLMRec (Wei et al., "LLMRec: Large Language Models with Graph Augmentation for Recommendation", WSDM 2024)
on a LightGCN backbone.

Three LLM augmentations, all from TRAINING events only and all through the answer cache:

- implicit feedback: per user, a retriever (any registered model, fitted on `train`) proposes its top
  `n_candidates` unseen items; the LLM picks the one the user likes most (i+) and least (i-). The pick is by
  likelihood (mean log-probability per token of each candidate's text as the answer to "which candidate will
  this user enjoy most?", one shared-prefix call per user): i+ = the most likely, i- = the least likely;
- item attributes: the LLM states `item_attributes` of each item (the paper's director, country, language);
  the item's text plus that answer is encoded into s_i;
- user profiles: the LLM writes `user_attributes` of each user from sampled training items; encoded into s_u.

Model: e = LightGCN's layer mean of E^(0) plus side terms of the projected features F = [W_u s_u; W_i s_i]
propagated on the same graph, X1 = A_hat F, X2 = A_hat X1 (as the authors' code: users take item attributes
one hop away and user profiles two hops away, items the reverse):
  e_u += w_user * norm(X2_u) + w_item * norm(X1_u),   e_i += w_user * norm(X1_i) + w_item * norm(X2_i).
Loss: BPR on the batch (+ L2 as LightGCN) + aug_weight * the pruned BPR of the augmented triples of a random
`aug_sample_rate` of the batch rows (noise pruning: only the `keep_ratio` share with the smallest loss counts)
+ recon_weight * the MAE feature enhancement: a `mask_ratio` of the users' and items' features are replaced by
the mean feature before projection and a decoder restores them from X2, by (1 - cos)^alpha.

`llm: "none"` is an ablation, not the paper's method: attributes are the items' own texts, profiles the
sampled items' texts, and i+/i- the candidates most/least cosine-similar to the user's profile vector.
Deviations from the paper and the authors' code: docs/models/llmrec.md.
"""

from __future__ import annotations

from typing import Any, Self, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.llm.profiles import generate_texts, sample_user_items
from recstack.models.kernels.graph import (LightGCNFields, LightGCNNet, PropagatedFactors, graph_bpr_loss, layer_mean,
                                           normalized_adjacency, sparse_tensor, symmetric_matmul, triple_scores)
from recstack.models.kernels.side import rows_for_items
from recstack.models.llm.item_texts import ItemTextsAndLLM
from recstack.models.neural import TorchRecommender
from recstack.models.protocol import ModelConfig, check_trainable
from recstack.train.indexing import gather_rows

# the paper's attributes (MovieLens / Netflix): what the LLM is asked to add to an item and to infer of a user
ITEM_ATTRIBUTES = ["director", "country", "language"]
USER_ATTRIBUTES = ["age", "gender", "liked genres", "disliked genres", "liked directors", "country", "language"]


class LLMRecConfig(ModelConfig, LightGCNFields):  # the backbone: LightGCN's fields and defaults
    llm: str = "smollm2"  # a named model or a path (recstack.llm.LocalLM); "none": text stand-ins (ablation)
    llm_cache: str | None = None  # the answer cache (SQLite); None: <cache>/llm/answers.sqlite, as `recstack run`
    augment_edges: bool = True  # (1) LLM-picked (u, i+, i-) triples
    augment_items: bool = True  # (2) LLM-stated item attributes (off: the item's own text)
    augment_users: bool = True  # (3) LLM-written user profiles (off: the sampled items' texts)
    item_attributes: list[str] = Field(default_factory=lambda: list(ITEM_ATTRIBUTES))
    user_attributes: list[str] = Field(default_factory=lambda: list(USER_ATTRIBUTES))
    profile_items: PositiveInt = 10  # training items per user prompt (a seeded sample of them)
    max_new_tokens: PositiveInt = 48  # per attribute / profile answer
    retriever: str = "itemknn"  # the base recommender proposing the candidates (a registered name)
    retriever_params: dict[str, Any] = Field(default_factory=dict)
    n_candidates: int = Field(10, ge=2, le=100)  # candidates per user the LLM picks i+ and i- from
    encoder: str = "minilm"  # "minilm", "tfidf" or a local sentence-transformers directory
    tfidf_dim: PositiveInt = 128
    cache_embeddings: bool = True  # keep encoded texts on disk (recstack's embeddings cache)
    user_feature_weight: NonNegativeFloat = 0.1  # w_user (the authors' user_cat_rate)
    item_feature_weight: NonNegativeFloat = 0.1  # w_item (the authors' item_cat_rate)
    aug_sample_rate: float = Field(0.1, ge=0, le=1)  # share of a batch's rows that bring their user's triple
    aug_weight: NonNegativeFloat = 1.0  # a kept augmented triple weighs aug_weight x one batch triple
    keep_ratio: float = Field(0.8, gt=0, le=1)  # noise pruning: share of the augmented triples kept (lowest loss)
    mask_ratio: float = Field(0.1, ge=0, lt=1)  # feature enhancement: share of users' and items' features masked
    recon_weight: NonNegativeFloat = 0.1  # weight of the masked-feature reconstruction (authors' att_re_rate)
    sce_alpha: PositiveFloat = 2.0  # (1 - cos)^alpha (authors' alpha_l)


# ---- prompts (our own wording after the authors' construct_prompt scripts) ---------------------------
ATTRIBUTE_SYSTEM = "You are a knowledge base for a recommender system. You state facts about items briefly."
PROFILE_SYSTEM = ("You build user profiles for a recommender system. From the items a user enjoyed, you make an "
                  "educated guess about the user; never answer 'unknown'.")
PICK_SYSTEM = ("You are a recommender system. Given items a user enjoyed and a list of candidates, you name the "
               "candidate the user will enjoy most.")


def attribute_messages(text: str, attributes: Sequence[str]) -> list[dict[str, str]]:
    asked = ", ".join(attributes)
    return [{"role": "system", "content": ATTRIBUTE_SYSTEM},
            {"role": "user", "content": f"Item: {text}\n\nGive its {asked}, one per line as 'name: value'."}]


def profile_messages(item_texts: Sequence[str], attributes: Sequence[str]) -> list[dict[str, str]]:
    listed = "\n".join(f"- {t}" for t in item_texts)
    asked = ", ".join(attributes)
    return [{"role": "system", "content": PROFILE_SYSTEM},
            {"role": "user", "content": f"Items this user enjoyed:\n{listed}\n\nGive the user's {asked}, one per "
                                        "line as 'name: value'."}]


def pick_messages(history_texts: Sequence[str], candidate_texts: Sequence[str]) -> list[dict[str, str]]:
    history = "\n".join(f"- {t}" for t in history_texts) or "- (nothing yet)"
    candidates = "\n".join(f"- {t}" for t in candidate_texts)
    return [{"role": "system", "content": PICK_SYSTEM},
            {"role": "user", "content": f"Items this user enjoyed:\n{history}\n\nCandidates:\n{candidates}\n\n"
                                        "Which candidate will this user enjoy most? Answer with the candidate only."}]


# ---- the augmentations ---------------------------------------------------------------------------
def retrieve_candidates(scores_of, train: Interactions, n_candidates: int, block: int | None = None) -> np.ndarray:
    """(n_users, n_candidates) int64: each user's best-scored items outside the user's training items, best
    first, -1 where fewer remain. `scores_of(users)` -> (B, n_items) scores (a fitted model's `score`)."""
    matrix = train.matrix().tocsr()
    out = np.full((train.n_users, n_candidates), -1, dtype=np.int64)
    k = min(n_candidates, train.n_items)
    block = block or max(1, min(1024, (1 << 25) // max(train.n_items, 1)))  # at most 256 MB of float64 scores
    for start in range(0, train.n_users, block):
        users = np.arange(start, min(start + block, train.n_users))
        scores = np.array(scores_of(users), dtype=np.float64, copy=True)
        scores[np.isnan(scores)] = -np.inf
        seen = matrix[users]
        scores[np.repeat(np.arange(len(users)), np.diff(seen.indptr)), seen.indices] = -np.inf  # never a positive
        # a stable order: equal scores go to the lower index, so candidates repeat on every machine
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        valid = np.isfinite(np.take_along_axis(scores, order, axis=1))
        out[users, :k] = np.where(valid, order, -1)
    return out


def likelihood_picks(lm, samples: Sequence[np.ndarray], texts: Sequence[str], candidates: np.ndarray,
                     length_norm: bool = True) -> np.ndarray:
    """(n_users, 2) int64 (i+, i-) per user, -1 -1 for a user without training items or with fewer than two
    candidates. One shared-prefix scoring call per user: the prompt lists the candidates (sorted by index,
    so the call and its cache key do not depend on the retriever's order) and each candidate's text is
    scored as the answer; i+ is the most likely, i- the least likely (ties: the lower index)."""
    out = np.full((len(samples), 2), -1, dtype=np.int64)
    lengths: dict[int, int] = {}
    for user, history in enumerate(samples):
        row = np.sort(candidates[user][candidates[user] >= 0])
        if len(history) == 0 or len(row) < 2:
            continue
        options = [texts[i] for i in row]
        prefix = lm.render(pick_messages([texts[i] for i in history], options))
        scores = np.asarray(lm.continuation_logprobs(prefix, options), dtype=np.float64)
        if length_norm:  # a long title must not lose for its length alone
            for i, text in zip(row.tolist(), options):
                if i not in lengths:
                    lengths[i] = lm.count_tokens(text)
            scores = scores / np.maximum([lengths[i] for i in row.tolist()], 1)
        out[user] = row[np.argmax(scores)], row[np.argmin(scores)]
    return out


def similarity_picks(user_vectors: np.ndarray, item_vectors: np.ndarray, candidates: np.ndarray,
                     has_history: np.ndarray) -> np.ndarray:
    """The `llm: "none"` stand-in for `likelihood_picks`: i+ / i- = the candidates most / least cosine-similar
    to the user's profile vector (ties: the lower index); -1 -1 as there."""
    out = np.full((len(candidates), 2), -1, dtype=np.int64)
    u = user_vectors / np.maximum(np.linalg.norm(user_vectors, axis=1, keepdims=True), 1e-12)
    v = item_vectors / np.maximum(np.linalg.norm(item_vectors, axis=1, keepdims=True), 1e-12)
    for user in np.flatnonzero(has_history):
        row = np.sort(candidates[user][candidates[user] >= 0])
        if len(row) < 2:
            continue
        similarity = np.round(v[row] @ u[user], 9)  # rounding: equal vectors tie exactly on every machine
        out[user] = row[np.argmax(similarity)], row[np.argmin(similarity)]
    return out


# ---- robustification -----------------------------------------------------------------------------
def noise_pruned(losses: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """The paper's noise pruning: the `keep_ratio` share (at least one) of the per-triple `losses` with the
    SMALLEST values; the rest, the triples the model disagrees with most, are treated as noise and dropped."""
    if len(losses) == 0:
        return losses
    count = max(1, int(keep_ratio * len(losses)))
    return torch.topk(losses, count, largest=False, sorted=False).values


def sce_loss(decoded: torch.Tensor, target: torch.Tensor, alpha: float) -> torch.Tensor:
    """Scaled cosine error (GraphMAE), the authors' feature restoration loss: mean (1 - cos)^alpha."""
    cosine = (F.normalize(decoded, dim=-1) * F.normalize(target, dim=-1)).sum(-1)
    return (1.0 - cosine).pow(alpha).mean()


class _Net(LightGCNNet):
    """LightGCN's embeddings and graph plus the frozen side vectors (users' profiles, items' attributes),
    their projections into the CF space, the restoration decoder and the augmented pairs."""

    def __init__(self, adjacency: torch.Tensor, n_users: int, n_items: int, embedding_size: int, n_layers: int,
                 init_std: float, user_vectors: torch.Tensor, item_vectors: torch.Tensor, pairs: torch.Tensor,
                 feature_weights: tuple[float, float]) -> None:
        super().__init__(adjacency, n_users, n_items, embedding_size, n_layers, init_std)
        width = user_vectors.shape[1]
        self.user_proj = torch.nn.Linear(width, embedding_size)
        self.item_proj = torch.nn.Linear(width, embedding_size)
        # the authors' Decoder: Linear(d, d_s) -> LeakyReLU, applied to the propagated features of masked nodes
        self.decoder = torch.nn.Sequential(torch.nn.Linear(embedding_size, width), torch.nn.LeakyReLU())
        for layer in (self.user_proj, self.item_proj, self.decoder[0]):
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
        self.feature_weights = feature_weights
        self.register_buffer("user_vectors", user_vectors, persistent=False)
        self.register_buffer("item_vectors", item_vectors, persistent=False)
        self.register_buffer("pairs", pairs, persistent=False)  # (n_users, 2): i+, i-; -1 where none

    def encode(self, masked_users: torch.Tensor | None = None,
               masked_items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(final embeddings (n_users + n_items, d), X2 or None when the side terms are off)."""
        final = layer_mean(self.adjacency, self.embedding.weight, self.n_layers)
        w_user, w_item = self.feature_weights
        if w_user == 0 and w_item == 0 and masked_users is None:
            return final, None
        users, items = self.user_vectors, self.item_vectors
        if masked_users is not None:  # MAE-style: masked rows read the mean vector, as the authors' code
            users = users.index_copy(0, masked_users, users.mean(0, keepdim=True).expand(len(masked_users), -1))
            items = items.index_copy(0, masked_items, items.mean(0, keepdim=True).expand(len(masked_items), -1))
        features = torch.cat([self.user_proj(users), self.item_proj(items)])
        one_hop = symmetric_matmul(self.adjacency, features)
        two_hop = symmetric_matmul(self.adjacency, one_hop)
        n = self.n_users
        # users: their own kind (profiles) two hops away, item attributes one hop away; items the reverse
        user_kind = torch.cat([two_hop[:n], one_hop[n:]])
        item_kind = torch.cat([one_hop[:n], two_hop[n:]])
        side = w_user * F.normalize(user_kind, dim=1) + w_item * F.normalize(item_kind, dim=1)
        return final + side, two_hop

    def propagate(self) -> torch.Tensor:
        return self.encode()[0]


class LLMRec(ItemTextsAndLLM, PropagatedFactors, TorchRecommender):
    """LightGCN with LLM-augmented BPR triples, item attributes and user profiles, denoised."""

    Config = LLMRecConfig

    def __init__(self, config: LLMRecConfig | None = None) -> None:
        super().__init__(config)
        self._init_item_texts()

    # ---- side information ---------------------------------------------------------------------
    def _texts(self, train: Interactions) -> list[str]:
        if self._item_texts is None:
            raise RecstackError("LLMRec needs item texts before fit: call model.use_dataset(dataset) (a Dataset with "
                                "an item side table; `recstack run` does this) or model.set_item_texts(item_ids, texts)")
        rows = rows_for_items(self._item_ids, train.items.ids, model="LLMRec", what="item text")
        return [str(t) for t in self._item_texts[rows]]

    def side_texts(self, train: Interactions) -> tuple[list[str], list[str], list[np.ndarray]]:
        """(user profiles, item attribute texts, each user's prompt history), row = dense index of `train`."""
        c = self.config
        texts = self._texts(train)
        samples = sample_user_items(train, c.profile_items, c.seed)
        lm = self.language_model()
        items = list(texts)
        if lm is not None and c.augment_items:
            answers = generate_texts(lm, [attribute_messages(t, c.item_attributes) for t in texts], c.max_new_tokens)
            items = [f"{t} {a}".strip() for t, a in zip(texts, answers)]  # the LLM adds to the text, never replaces it
        users = ["\n".join(texts[i] for i in s) for s in samples]
        if lm is not None and c.augment_users:
            asked = [u for u, s in enumerate(samples) if len(s)]
            answers = generate_texts(lm, [profile_messages([texts[i] for i in samples[u]], c.user_attributes)
                                          for u in asked], c.max_new_tokens)
            for user, answer in zip(asked, answers):
                users[user] = answer
        return users, items, samples

    def _vectors(self, user_texts: list[str], item_texts: list[str]) -> np.ndarray:
        from recstack.data.features import SentenceEncoder, TfidfSVDEncoder, encode_texts

        c = self.config
        if c.encoder == "tfidf":
            encoder = TfidfSVDEncoder(dim=c.tfidf_dim, seed=c.seed)
        else:
            encoder = SentenceEncoder(None if c.encoder == "minilm" else c.encoder)
        # one call: TF-IDF is fitted on users' and items' texts together, so both share one space
        texts = [t if t else " " for t in user_texts + item_texts]
        return encode_texts(texts, encoder, cache=c.cache_embeddings, progress=False)

    def augmented_pairs(self, train: Interactions, samples: list[np.ndarray], texts: list[str],
                        user_vectors: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
        """(n_users, 2) (i+, i-) per user from the retriever's candidates; -1 -1 where none."""
        from recstack.models import build

        c = self.config
        retriever = build(c.retriever, c.retriever_params).fit(train)
        candidates = retrieve_candidates(lambda users: retriever.score(users, train), train, c.n_candidates)
        lm = self.language_model()
        if lm is None:
            return similarity_picks(user_vectors, item_vectors, candidates, train.user_counts() > 0)
        return likelihood_picks(lm, samples, texts, candidates)

    # ---- training -----------------------------------------------------------------------------
    def fit(self, train: Interactions, valid: Interactions | None = None, *, options=None) -> Self:
        check_trainable("LLMRec", train)
        c = self.config
        # the LLM and the retriever run before the base fit seeds torch: loading an LLM draws random numbers
        # (weight init), and a re-run answered by the cache loads none
        user_texts, item_texts, samples = self.side_texts(train)
        vectors = self._vectors(user_texts, item_texts)
        user_vectors, item_vectors = vectors[:train.n_users], vectors[train.n_users:]
        pairs = np.full((train.n_users, 2), -1, dtype=np.int64)
        if c.augment_edges:
            pairs = self.augmented_pairs(train, samples, self._texts(train), user_vectors, item_vectors)
        self._side = (user_vectors, item_vectors, pairs)
        try:
            super().fit(train, valid, options=options)
        finally:
            del self._side
        self.augmented_pairs_ = pairs  # (n_users, 2) i+, i- per user; saved in state.npz, to read
        self.user_profiles_, self.item_attributes_ = user_texts, item_texts  # saved in model.json, to read
        return self

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        user_vectors, item_vectors, pairs = self._side
        matrix = self.sample_pairs(train, rng)

        def tensor(a):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        return _Net(sparse_tensor(normalized_adjacency(matrix)), train.n_users, train.n_items, c.embedding_size,
                    c.n_layers, c.init_std, tensor(user_vectors), tensor(item_vectors), torch.from_numpy(pairs),
                    (c.user_feature_weight, c.item_feature_weight))

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        c = self.config
        users, pos, neg = batch
        masking = c.mask_ratio > 0 and c.recon_weight > 0
        masked_users = masked_items = None
        if masking:
            device = module.user_vectors.device
            masked_users = torch.randperm(module.n_users, device=device)[:max(1, int(c.mask_ratio * module.n_users))]
            n_items = len(module.item_vectors)
            masked_items = torch.randperm(n_items, device=device)[:max(1, int(c.mask_ratio * n_items))]
        final, two_hop = module.encode(masked_users, masked_items)
        loss = graph_bpr_loss(final, module.embedding.weight, users, pos, neg, module.n_users, c.reg)
        if c.augment_edges and c.aug_sample_rate > 0 and c.aug_weight > 0:
            loss = loss + c.aug_weight * self.augmented_loss(module, final, users)
        if masking:
            decoded = module.decoder(torch.cat([gather_rows(two_hop, masked_users),
                                                gather_rows(two_hop, module.n_users + masked_items)]))
            target = torch.cat([gather_rows(module.user_vectors, masked_users),
                                gather_rows(module.item_vectors, masked_items)])
            loss = loss + c.recon_weight * sce_loss(decoded, target, c.sce_alpha)
        return loss

    def augmented_loss(self, module: _Net, final: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """The pruned BPR of the augmented triples of a random `aug_sample_rate` of the batch's rows, summed
        and divided by the batch size: a kept triple weighs as one batch triple (the authors append them to
        the batch)."""
        count = int(self.config.aug_sample_rate * len(users))
        if count == 0:
            return final.new_zeros(())
        drawn = users[torch.randperm(len(users), device=users.device)[:count]]
        pairs = module.pairs[drawn]
        has = pairs[:, 0] >= 0
        if not bool(has.any()):
            return final.new_zeros(())
        pos_scores, neg_scores = triple_scores(final, drawn[has], pairs[has, 0], pairs[has, 1:], module.n_users)
        losses = F.softplus(neg_scores[:, 0] - pos_scores)
        return noise_pruned(losses, self.config.keep_ratio).sum() / len(users)
