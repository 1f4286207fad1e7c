"""RLMRec (Ren et al., "Representation Learning with Large Language Models for Recommendation", WWW 2024)
on a LightGCN backbone.

An LLM writes a profile of each item (from its text) and of each user (from at most `profile_items` of the
user's TRAINING items with their item profiles; `recstack.llm.profiles`); a sentence encoder embeds them
into s_u, s_i. The backbone is recstack's LightGCN (final e = mean_{k=0..K} A_hat^k E^(0)); the loss is
BPR + reg * the batch's squared layer-0 norms per example, plus kd_weight times one of the alignments:

- contrastive (RLMRec-Con): m(s) = MLP(s), Linear(d_s, (d_s + d)/2) -> LeakyReLU -> Linear(., d) as in the
  authors' code, and InfoNCE_tau(e_v, m(s_v)) over the batch's distinct users, plus the same over its
  distinct positive and negative items (cosine / tau, the batch's other nodes as negatives);
- generative (RLMRec-Gen): before propagation a random `mask_ratio` of the nodes with training edges get
  a learned mask token for E^(0) (the BPR term is computed on that masked pass, as in the authors' code),
  and InfoNCE_tau(MLP(e_v), s_v) over the masked nodes reconstructs their profile vectors (MLP: d -> d_s).

Scores are <e_u, e_i> of the unmasked final embeddings. `llm: "none"` is an ablation, not the paper's
method: the profiles are the items' own texts and the lists of the users' sampled training items' texts.
Item texts arrive through `use_dataset(dataset)` (or `set_item_texts`) before `fit`. Deviations from the
authors' code (no edge dropout, layer mean, per-batch L2, in-batch negatives for users): docs/models/rlmrec.md.
"""

from __future__ import annotations

from typing import Literal, Self

import numpy as np
import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.graph import (LightGCNFields, LightGCNNet, PropagatedFactors, graph_bpr_loss, layer_mean,
                                           normalized_adjacency, sparse_tensor)
from recstack.models.kernels.side import rows_for_items
from recstack.models.llm.item_texts import ItemTextsAndLLM
from recstack.models.neural import TorchRecommender
from recstack.models.protocol import ModelConfig, check_trainable
from recstack.train.indexing import gather_rows
from recstack.train.losses import info_nce_loss

# the authors' defaults per variant (encoder/config/modelconf/lightgcn_{plus,gene}.yml)
DEFAULT_KD_WEIGHT = {"contrastive": 0.01, "generative": 0.1}


class RLMRecConfig(ModelConfig, LightGCNFields):  # the backbone: LightGCN's fields and defaults
    alignment: Literal["contrastive", "generative"] = "contrastive"  # RLMRec-Con or RLMRec-Gen
    llm: str = "smollm2"  # a named model or a path (recstack.llm.LocalLM); "none": texts as profiles (ablation)
    llm_cache: str | None = None  # the answer cache (SQLite); None: <cache>/llm/answers.sqlite, as `recstack run`
    profile_items: PositiveInt = 10  # training items per user profile prompt (a seeded sample of them)
    max_new_tokens: PositiveInt = 96  # per profile
    encoder: Literal["minilm", "tfidf"] = "minilm"  # how profiles become vectors
    tfidf_dim: PositiveInt = 128  # width of the "tfidf" encoder's vectors
    cache_embeddings: bool = True  # keep encoded profiles on disk (recstack's embeddings cache)
    kd_weight: NonNegativeFloat | None = None  # alignment weight; None: the authors' 0.01 (Con) or 0.1 (Gen)
    kd_temperature: PositiveFloat = 0.2  # tau of the alignment's InfoNCE
    mask_ratio: float = Field(0.1, gt=0, lt=1)  # Gen: share of the nodes masked per step

    def alignment_weight(self) -> float:
        return DEFAULT_KD_WEIGHT[self.alignment] if self.kd_weight is None else self.kd_weight


class _Net(LightGCNNet):
    """LightGCN's embeddings and graph (the shared `LightGCNNet`), the frozen profile vectors (users,
    then items) and the MLP between the two spaces (semantic -> CF for Con, CF -> semantic for Gen)."""

    def __init__(self, adjacency: torch.Tensor, n_users: int, n_items: int, embedding_size: int, n_layers: int,
                 init_std: float, profiles: torch.Tensor, trained_nodes: torch.Tensor, alignment: str) -> None:
        super().__init__(adjacency, n_users, n_items, embedding_size, n_layers, init_std)
        width = profiles.shape[1]
        hidden = (width + embedding_size) // 2
        inputs, outputs = (width, embedding_size) if alignment == "contrastive" else (embedding_size, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.LeakyReLU(),
                                       torch.nn.Linear(hidden, outputs))
        for layer in self.mlp:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(layer.weight)  # as the authors' _init_weight
        self.mask_token = torch.nn.Parameter(torch.zeros(1, embedding_size)) if alignment == "generative" else None
        self.register_buffer("profiles", profiles, persistent=False)
        self.register_buffer("trained_nodes", trained_nodes, persistent=False)  # the nodes Gen may mask

    def propagate(self, masked: torch.Tensor | None = None) -> torch.Tensor:
        """(n_users + n_items, d): LightGCN's layer mean, the `masked` nodes' E^(0) rows replaced by the token."""
        layer = self.embedding.weight
        if masked is not None:
            keep = torch.ones(len(layer), 1, device=layer.device, dtype=layer.dtype)
            keep[masked] = 0.0
            layer = layer * keep + self.mask_token * (1.0 - keep)
        return layer_mean(self.adjacency, layer, self.n_layers)

    def draw_masked(self, ratio: float) -> torch.Tensor:
        """A uniform `ratio` of the nodes with training edges (torch's seeded RNG); at least one."""
        count = max(1, int(len(self.trained_nodes) * ratio))
        return self.trained_nodes[torch.randperm(len(self.trained_nodes), device=self.trained_nodes.device)[:count]]

def contrastive_alignment(final: torch.Tensor, profiles: torch.Tensor, mlp: torch.nn.Module, users: torch.Tensor,
                          items: torch.Tensor, n_users: int, temperature: float) -> torch.Tensor:
    """RLMRec-Con: InfoNCE(e_v, MLP(s_v)) over the batch's distinct users plus the same over its distinct items
    (`items`: positives and negatives together, item indices)."""
    total = final.new_zeros(())
    for nodes in (torch.unique(users), torch.unique(items) + n_users):
        total = total + info_nce_loss(gather_rows(final, nodes), mlp(gather_rows(profiles, nodes)), temperature)
    return total


def generative_alignment(final: torch.Tensor, profiles: torch.Tensor, mlp: torch.nn.Module, masked: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """RLMRec-Gen: InfoNCE(MLP(e_v), s_v) over the masked nodes (users and items together)."""
    return info_nce_loss(mlp(gather_rows(final, masked)), gather_rows(profiles, masked), temperature)


class RLMRec(ItemTextsAndLLM, PropagatedFactors, TorchRecommender):
    """LightGCN whose embeddings are aligned with encoded LLM profiles of users and items."""

    Config = RLMRecConfig

    def __init__(self, config: RLMRecConfig | None = None) -> None:
        super().__init__(config)
        self._init_item_texts()

    # ---- side information ---------------------------------------------------------------------
    def profiles(self, train: Interactions) -> tuple[list[str], list[str]]:
        """(user profiles, item profiles), row = dense index of `train`; users from `train`'s events only."""
        from recstack.llm import profiles

        if self._item_texts is None:
            raise RecstackError("RLMRec needs item texts before fit: call model.use_dataset(dataset) (a Dataset with "
                                "an item side table; `recstack run` does this) or model.set_item_texts(item_ids, texts)")
        c = self.config
        texts = self._item_texts[rows_for_items(self._item_ids, train.items.ids, model="RLMRec", what="item text")]
        texts = [str(t) for t in texts]
        lm = self.language_model()
        items = profiles.item_profiles(lm, texts, c.max_new_tokens)
        samples = profiles.sample_user_items(train, c.profile_items, c.seed)
        return profiles.user_profiles(lm, samples, texts, items, c.max_new_tokens), items

    def _profile_vectors(self, user_profiles: list[str], item_profiles: list[str]) -> np.ndarray:
        from recstack.data.features import SentenceEncoder, TfidfSVDEncoder, encode_texts

        c = self.config
        encoder = SentenceEncoder() if c.encoder == "minilm" else TfidfSVDEncoder(dim=c.tfidf_dim, seed=c.seed)
        # one call: TF-IDF is fitted on users' and items' profiles together, so both share one space
        return encode_texts(user_profiles + item_profiles, encoder, cache=c.cache_embeddings, progress=False)

    # ---- training -----------------------------------------------------------------------------
    def fit(self, train: Interactions, valid: Interactions | None = None, *, options=None) -> Self:
        check_trainable("RLMRec", train)
        # profiles before the base fit seeds torch: loading an LLM draws random numbers (weight init), and a
        # re-run answered by the cache loads none, so the embeddings' initialisation must come after
        user_profiles, item_profiles = self.profiles(train)
        self._semantic = self._profile_vectors(user_profiles, item_profiles)
        try:
            super().fit(train, valid, options=options)
        finally:
            del self._semantic
        self.user_profiles_, self.item_profiles_ = user_profiles, item_profiles  # saved in model.json, to read
        return self

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        matrix = self.sample_pairs(train, rng)
        trained = np.flatnonzero(np.concatenate([train.user_counts() > 0, train.item_counts() > 0]))
        return _Net(sparse_tensor(normalized_adjacency(matrix)), train.n_users, train.n_items, c.embedding_size,
                    c.n_layers, c.init_std, torch.from_numpy(np.ascontiguousarray(self._semantic, dtype=np.float32)),
                    torch.from_numpy(trained.astype(np.int64)), c.alignment)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        c = self.config
        users, pos, neg = batch
        weight = c.alignment_weight()
        masked = module.draw_masked(c.mask_ratio) if c.alignment == "generative" and weight > 0 else None
        final = module.propagate(masked)
        loss = graph_bpr_loss(final, module.embedding.weight, users, pos, neg, module.n_users, c.reg)
        if weight == 0:
            return loss
        if masked is not None:
            kd = generative_alignment(final, module.profiles, module.mlp, masked, c.kd_temperature)
        else:
            items = torch.cat([pos.reshape(-1), neg.reshape(-1)])
            kd = contrastive_alignment(final, module.profiles, module.mlp, users, items, module.n_users,
                                       c.kd_temperature)
        return loss + weight * kd
