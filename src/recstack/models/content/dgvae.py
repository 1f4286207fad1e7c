"""DGVAE (Zhou & Miao, "Disentangled Graph Variational Auto-Encoder for Multimodal Recommendation with
Interpretability", IEEE TMM 2024, arXiv 2402.16110; reference code enoche/DGVAE `code/dgvae.py`).

Two MacridVAE-style disentangled VAEs, one over a user's items x_u, one over the words of those items
w_u (tf-idf bag of words of the item texts), tied by K shared latent factors. Per side s (catalogue
items or words, unit embeddings e_j, unit prototypes p_k): assignments c_jk = softmax_k(<e_j, p_k> / tau)
(Gumbel-softmax sample while training). Encoder, per factor k: x_k = norm(x * c_:k), on the item side
through the frozen multimodal kNN graph S as h_k = (x_k + x_k S^L) / 2 (a simplified residual GCN),
[mu_k, -logvar_k] = W h_k + b, mu_k unit, z_k = norm(mu_k + sigma_k eps), eps ~ N(0, std^2).
Fusion: the two sets of factors attend to each other (tanh(<q_i, k_j>) sigmoid(centred -L1(q_i, k_j))),
z_k = cf|text_k + text|cf_k feeds both decoders: log p(j) = log sum_k c_jk exp(<z_k, e_j> / tau).

Loss = CE_items + beta_cf KL_cf + lambda_text (CE_words + beta_text KL_text) + lambda_mi JSD-MI, the
Jensen-Shannon mutual-information term making factor k of one view predict factor k of the other
(softplus of the cross-factor scores). Interpretation: `factor_words(n)` lists, per factor, the words
assigned to it most strongly (c_wk); `user_words` / `user_factor_words` what a user's code decodes to.
Defaults: the reference's run-baby.sh. Deviations (vocabulary from item texts, K >= 1): docs/models/dgvae.md.
"""

from __future__ import annotations

from typing import Any, Self, Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, confloat

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.graph import directed_matmul, modality_graph, sparse_tensor
from recstack.models.kernels.side import ItemModalityInput, ModalityFields, rows_for_items
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresFromHistory, check_fitted, gather_items

__all__ = ["DGVAE", "DGVAEConfig", "cross_attention", "factor_mi_loss", "user_word_rows", "word_vocabulary"]


class DGVAEConfig(ModelConfig, TrainingFields, ModalityFields):
    modalities: list[str] = ["text"]  # the frozen item-item graph's inputs; [] encodes the bare history
    graph_weights: dict[str, NonNegativeFloat] | None = None  # None: image 0.04 / text 0.96 (reference), else equal
    knn_k: PositiveInt = 10
    n_item_layers: NonNegativeInt = 2  # L, hops on the item graph before the encoder (reference: 2)
    embedding_size: PositiveInt = 64  # d of every factor
    n_factors: PositiveInt = 3  # K prototypes / latent factors (run-baby.sh -ncl 3)
    tau: PositiveFloat = 0.1  # temperature of the assignments and the decoders
    dropout: confloat(ge=0.0, lt=1.0) = 0.5  # on each factor's encoder input
    noise_std: PositiveFloat = 0.075  # std of eps in the reparameterisation, item side (reference std)
    text_noise_std: PositiveFloat = 0.075  # the same, word side (reference text_std)
    beta_max: NonNegativeFloat = 0.2  # KL weight cap, item side; beta = min(cap, step / anneal_steps)
    text_beta_max: NonNegativeFloat = 0.2
    anneal_steps: PositiveInt = 20000
    text_anneal_steps: PositiveInt = 20000
    text_weight: NonNegativeFloat = 0.2  # lambda_text on the word VAE's ELBO
    mi_weight: NonNegativeFloat = 0.4  # lambda_reg on the mutual-information regulariser
    word_min_df: PositiveInt = 5  # a word must occur in at least this many item texts ...
    word_max_df: float = Field(0.6, gt=0.0, le=1.0)  # ... and in at most this share of them
    stop_words: bool = True  # drop sklearn's English stop words
    learning_rate: PositiveFloat = 1e-3
    epochs: PositiveInt = 100  # a maximum: early stopping ends training before
    batch_size: PositiveInt = 512  # users per update
    early_stopping_patience: PositiveInt | None = 20


# ---- the bag of words -------------------------------------------------------------------------------
def word_vocabulary(texts: Sequence[str], min_df: int, max_df: float, stop_words: bool) -> tuple[list[str], sp.csr_matrix]:
    """(words, counts): alphabetic tokens of >= 2 letters, lower-cased, kept when they occur in
    between `min_df` texts and a share `max_df` of them; counts is (n_texts, n_words) float32."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(lowercase=True, token_pattern=r"(?u)\b[^\W\d_]{2,}\b", min_df=min_df,
                                 max_df=max_df, stop_words="english" if stop_words else None, dtype=np.float32)
    try:
        counts = vectorizer.fit_transform([str(t) for t in texts])
    except ValueError as exc:  # nothing survives the cuts
        raise RecstackError(f"DGVAE found no word in the item texts between word_min_df={min_df} items and "
                            f"word_max_df={max_df:g} of the {len(texts)} items ({exc}); lower word_min_df or raise "
                            "word_max_df") from None
    return vectorizer.get_feature_names_out().tolist(), sp.csr_matrix(counts)


def user_word_rows(rows: sp.csr_matrix, item_words: sp.csr_matrix, idf: np.ndarray) -> np.ndarray:
    """A user's document is the concatenated texts of their items (as the reference): term counts
    rows @ item_words, times idf, L2-normalised; dense float32 (B, n_words)."""
    tf = np.asarray((rows @ item_words).todense(), dtype=np.float32) * idf
    norms = np.linalg.norm(tf, axis=1, keepdims=True)
    return tf / np.where(norms > 0, norms, 1.0)


def _binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    matrix = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    matrix.data[:] = 1.0
    return matrix


# ---- the pieces of the network, as functions (tested by hand) --------------------------------------
def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, K, d): factor i of q gathers the factors j of v by tanh(<q_i, k_j>) times a gate that is
    high when q_i is nearer (L1) to k_j than to q_i's average key."""
    relevance = torch.tanh(q @ k.transpose(1, 2))
    distance = -(q.unsqueeze(2) - k.unsqueeze(1)).abs().sum(-1)
    gate = torch.sigmoid(distance - distance.mean(-1, keepdim=True))
    return (relevance * gate) @ v


def factor_mi_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon MI estimator between the views' factors (B, K, d): positive pairs (a_i, b_i),
    negatives (a_i, b_j), j != i; mean over users and factors of E_neg softplus(s) + softplus(-s_pos)."""
    scores = a @ b.transpose(1, 2)  # (B, K, K)
    n_factors = scores.shape[1]
    positive = torch.diagonal(scores, dim1=1, dim2=2)
    loss = F.softplus(-positive)
    if n_factors > 1:  # with one factor there is no negative pair
        off = ~torch.eye(n_factors, dtype=torch.bool, device=scores.device)
        loss = loss + F.softplus(scores[:, off].view(-1, n_factors, n_factors - 1)).mean(-1)
    return loss.mean()


def _kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, e^logvar) || N(0, I)) summed over dims and factors, mean over users."""
    return (0.5 * (-logvar + logvar.exp() + mu.pow(2) - 1.0)).sum((1, 2)).mean()


class _Side(torch.nn.Module):
    """One disentangled VAE over a catalogue (items or words): embeddings, prototypes, one linear encoder."""

    def __init__(self, n: int, d: int, n_factors: int, tau: float) -> None:
        super().__init__()
        self.d, self.tau = d, tau
        # raw parameters, initialised by `initialise` only: building one to score draws no random numbers
        self.embedding = torch.nn.Parameter(torch.empty(n, d))
        self.prototypes = torch.nn.Parameter(torch.empty(n_factors, d))
        self.encoder_weight = torch.nn.Parameter(torch.empty(2 * d, n))
        self.encoder_bias = torch.nn.Parameter(torch.empty(2 * d))

    def initialise(self) -> None:
        for weight in (self.embedding, self.prototypes, self.encoder_weight):
            torch.nn.init.xavier_normal_(weight)  # the reference's
        torch.nn.init.normal_(self.encoder_bias, std=0.01)

    def assignments(self, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(log c (n, K), unit embeddings (n, d)); c is a Gumbel-softmax sample (tau 1) when `sample`,
        its mode otherwise. Kept in logs: a soft sample may underflow to 0 and log(0) has no gradient."""
        unit = F.normalize(self.embedding, dim=1)
        logits = unit @ F.normalize(self.prototypes, dim=1).T / self.tau
        if sample:
            logits = logits - torch.empty_like(logits).exponential_().log()  # + Gumbel(0, 1) noise
        return F.log_softmax(logits, dim=1), unit

    def encode(self, x: torch.Tensor, log_c: torch.Tensor, graph: tuple[torch.Tensor, torch.Tensor] | None,
               n_layers: int, dropout: float, noise_std: float) -> tuple[torch.Tensor, ...]:
        """(z, mu, logvar), each (B, K, d)."""
        batch, n = x.shape
        x_k = F.normalize(x.unsqueeze(1) * log_c.exp().T.unsqueeze(0), dim=2)  # (B, K, n)
        if graph is not None and n_layers > 0:
            flat = x_k.reshape(-1, n).T  # (n, B K): x S = (S^T x^T)^T with S^T applied as a sparse matrix
            for _ in range(n_layers):
                flat = directed_matmul(graph[1], graph[0], flat)
            x_k = (x_k + flat.T.reshape(batch, -1, n)) / 2
        h = F.linear(F.dropout(x_k, dropout, self.training), self.encoder_weight, self.encoder_bias)
        mu, logvar = F.normalize(h[..., :self.d], dim=2), -h[..., self.d:]
        z = mu
        if self.training:
            z = mu + torch.randn_like(mu) * noise_std * torch.exp(0.5 * logvar)
        return F.normalize(z, dim=2), mu, logvar

    def decode(self, z: torch.Tensor, log_c: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """log sum_k c_jk exp(<z_k, e_j> / tau): (B, n)."""
        return torch.logsumexp(z @ unit.T / self.tau + log_c.T.unsqueeze(0), dim=1)


class _Net(torch.nn.Module):
    def __init__(self, n_items: int, n_words: int, c: DGVAEConfig) -> None:
        super().__init__()
        self.c = c
        self.items = _Side(n_items, c.embedding_size, c.n_factors, c.tau)
        self.words = _Side(n_words, c.embedding_size, c.n_factors, c.tau)
        self.graph: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_graph(self, graph: sp.csr_matrix | None, device: Any = "cpu") -> None:
        """The frozen item-item graph S (and S^T for the backward pass); None or empty: no propagation."""
        self.graph = None if graph is None or graph.nnz == 0 else (sparse_tensor(graph).to(device),
                                                 sparse_tensor(graph.T.tocsr()).to(device))

    def forward(self, ratings: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(item log-likelihoods, word log-likelihoods, KL items, KL words, MI loss, fused z (B, K, d))."""
        c = self.c
        item_log_c, item_unit = self.items.assignments(self.training)
        word_log_c, word_unit = self.words.assignments(self.training)
        z_cf, mu_cf, logvar_cf = self.items.encode(ratings, item_log_c, self.graph, c.n_item_layers, c.dropout,
                                                   c.noise_std)
        z_text, mu_text, logvar_text = self.words.encode(words, word_log_c, None, 0, c.dropout, c.text_noise_std)
        text_given_cf = cross_attention(z_cf, z_text, z_text)
        cf_given_text = cross_attention(z_text, z_cf, z_cf)
        z = cf_given_text + text_given_cf  # one code per factor decodes both items and words
        return (self.items.decode(z, item_log_c, item_unit), self.words.decode(z, word_log_c, word_unit),
                _kl(mu_cf, logvar_cf), _kl(mu_text, logvar_text), factor_mi_loss(cf_given_text, text_given_cf), z)


def _nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Multinomial negative log-likelihood, mean over users (x may be tf-idf weights)."""
    return -(F.log_softmax(logits, dim=1) * x).sum(1).mean()


_FITTED = ("weights_", "item_words_", "idf_", "vocabulary_")


class DGVAE(ScoresFromHistory, ItemModalityInput, TorchRecommender):
    """Disentangled graph VAE over items and item-text words, factors aligned by mutual information."""

    Config = DGVAEConfig
    _item_texts: tuple[np.ndarray, np.ndarray] | None = None

    # ---- side data ------------------------------------------------------------------------------
    def set_item_texts(self, item_ids: Sequence[Any], texts: Sequence[str]) -> Self:
        """The text of each item (external ids), the source of the words; kept across fits, never saved."""
        ids, texts = np.asarray(item_ids), np.asarray([str(t) for t in texts], dtype=object)
        if ids.ndim != 1 or len(ids) != len(texts):
            raise RecstackError(f"DGVAE.set_item_texts needs one text per item id, got {len(ids)} ids and "
                                f"{len(texts)} texts")
        self._item_texts = (ids, texts)
        return self

    def use_dataset(self, dataset: Any) -> Self:
        """The modalities of the item graph and the item texts (recstack.data.features.item_texts)."""
        from recstack.data.features import item_texts

        if not dataset.item_table:
            raise RecstackError(f"DGVAE explains its factors with words of the item texts, but dataset "
                                f"{dataset.name!r} has no item table; load data with item metadata (titles, "
                                "genres) or call model.set_item_texts(item_ids, texts)")
        super().use_dataset(dataset)
        return self.set_item_texts(dataset.interactions.items.ids, item_texts(dataset))

    # ---- training ---------------------------------------------------------------------------------
    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        if self._item_texts is None:
            raise RecstackError("DGVAE needs the item texts before fit: call model.use_dataset(dataset) "
                                "(`recstack run` does) or model.set_item_texts(item_ids, texts)")
        ids, texts = self._item_texts
        texts = texts[rows_for_items(ids, train.items.ids, model="DGVAE", what="item texts")]
        self._vocabulary, self._item_words = word_vocabulary(texts, c.word_min_df, c.word_max_df, c.stop_words)
        features = self.modality_features(train)
        weights = c.graph_weights
        if weights is None and sorted(features) == ["image", "text"]:
            weights = {"image": 0.04, "text": 0.96}  # the reference's txt_weight
        self._graph = modality_graph(features, c.knn_k, weights, model="DGVAE")
        if self._graph is None:  # no modalities: an empty graph, which saves (None would read as unfitted)
            self._graph = sp.csr_matrix((train.n_items, train.n_items), dtype=np.float32)
        self._matrix = _binary(train.matrix())
        self._active = np.flatnonzero(np.diff(self._matrix.indptr) > 0)
        # idf over the training users' documents, as the reference's TfidfVectorizer (smooth idf)
        present = (self._matrix[self._active] @ self._item_words) > 0
        df = np.asarray(present.sum(axis=0)).ravel()
        self._idf = (np.log((1.0 + len(self._active)) / (1.0 + df)) + 1.0).astype(np.float32)
        self._rng, self._step = rng, 0
        net = _Net(train.n_items, len(self._vocabulary), c)
        net.items.initialise()
        net.words.initialise()
        net.set_graph(self._graph)
        self._net = net
        return net

    def batches(self):
        device = self._net.items.embedding.device
        if self._net.graph is not None and self._net.graph[0].device != device:  # the trainer moved the module
            self._net.set_graph(self._graph, device)
        order = self._rng.permutation(self._active)
        for start in range(0, len(order), self.config.batch_size):
            rows = self._matrix[order[start:start + self.config.batch_size]]
            yield rows.toarray(), user_word_rows(rows, self._item_words, self._idf)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        c = self.config
        ratings, words = batch
        item_logits, word_logits, kl_cf, kl_text, mi, _ = module(ratings, words)
        self._step += 1
        beta_cf = min(c.beta_max, self._step / c.anneal_steps)  # the reference's annealing
        beta_text = min(c.text_beta_max, self._step / c.text_anneal_steps)
        loss = _nll(item_logits, ratings) + beta_cf * kl_cf
        loss = loss + c.text_weight * (_nll(word_logits, words) + beta_text * kl_text)
        return loss + c.mi_weight * mi if c.mi_weight > 0 else loss

    def export(self, module: _Net) -> dict[str, Any]:
        fitted = super().export(module)
        return {**fitted, "item_graph_": self._graph, "item_words_": self._item_words, "idf_": self._idf,
                "vocabulary_": list(self._vocabulary)}

    # ---- scoring and interpretation --------------------------------------------------------------
    def _outputs(self, users: np.ndarray, history: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """From the histories: item log-likelihoods (B, n_items), word log-likelihoods (B, n_words) and
        each factor's word term log c_jk + <z_k, e_j> / tau (B, K, n_words)."""
        check_fitted(self, *_FITTED)
        n_items = self.item_words_.shape[0]
        if history.n_items != n_items:
            raise RecstackError(f"the history has {history.n_items} items but DGVAE was fitted on {n_items}; "
                                "score with interactions that share the training item vocabulary")
        users = np.asarray(users, dtype=np.int64)
        matrix = history.matrix()
        known = (users >= 0) & (users < matrix.shape[0])
        rows = sp.csr_matrix((len(users), n_items), dtype=np.float32)
        if known.any():  # users beyond the history's vocabulary keep an empty row
            picked = sp.csr_matrix((np.ones(int(known.sum())), (np.flatnonzero(known), users[known])),
                                   shape=(len(users), matrix.shape[0]))
            rows = _binary(picked @ matrix)
        net = _Net(n_items, len(self.vocabulary_), self.config)
        net.load_state_dict({key: torch.from_numpy(np.asarray(value)) for key, value in self.weights_.items()})
        net.set_graph(self.item_graph_)
        net.eval()
        with torch.no_grad():
            item_logits, word_logits, *_, z = net(torch.from_numpy(rows.toarray()),
                                                  torch.from_numpy(user_word_rows(rows, self.item_words_, self.idf_)))
            log_c, unit = net.words.assignments(sample=False)
            per_factor = z @ unit.T / net.words.tau + log_c.T.unsqueeze(0)
        return item_logits.numpy(), word_logits.numpy(), per_factor.numpy()

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        item_logits, _, _ = self._outputs(users, history)
        return np.ascontiguousarray(gather_items(item_logits, items), dtype=np.float32)

    def factor_words(self, n: int = 10, by: str = "assignment") -> list[list[str]]:
        """Per latent factor k, n words, best first. by="assignment": the highest c_wk =
        softmax_k(cos(e_w, p_k) / tau), the (mode) assignment the encoder and decoder use; by="usage":
        the words whose strongest factor is k, the ones most training users' documents hold first
        (a partition of the vocabulary, so a factor may list fewer than n)."""
        check_fitted(self, *_FITTED)
        if n < 1 or by not in ("assignment", "usage"):
            raise RecstackError(f"factor_words needs n >= 1 and by 'assignment' or 'usage', got n={n}, by={by!r}")
        words = self.weights_["words.embedding"]
        prototypes = self.weights_["words.prototypes"]
        logits = (words / np.linalg.norm(words, axis=1, keepdims=True)) @ \
            (prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True)).T / self.config.tau  # (n_words, K)
        if by == "usage":
            strongest = logits.argmax(axis=1)
            common_first = np.argsort(self.idf_, kind="stable")  # low idf: in many users' documents
            return [[self.vocabulary_[j] for j in common_first[strongest[common_first] == k][:n]]
                    for k in range(logits.shape[1])]
        # log c_wk: a word close to prototype k but closer to another one ranks low for k
        log_c = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        order = np.argsort(-log_c, axis=0, kind="stable")[:n]
        return [[self.vocabulary_[j] for j in order[:, k]] for k in range(log_c.shape[1])]

    def user_words(self, users: np.ndarray, history: Interactions, n: int = 10) -> list[list[str]]:
        """Per user, the n words their latent code decodes to most strongly (the word-side decoder)."""
        _, word_logits, _ = self._outputs(users, history)
        order = np.argsort(-word_logits, axis=1, kind="stable")[:, :n]
        return [[self.vocabulary_[j] for j in row] for row in order]

    def user_factor_words(self, users: np.ndarray, history: Interactions, n: int = 10) -> list[list[list[str]]]:
        """Per user, per factor k, the n words of factor k's share of the word decoder, c_jk exp(<z_k, e_j>
        / tau): what each of the user's K interests is about (the paper's case study)."""
        _, _, per_factor = self._outputs(users, history)
        order = np.argsort(-per_factor, axis=2, kind="stable")[:, :, :n]
        return [[[self.vocabulary_[j] for j in factor] for factor in user] for user in order]
