"""Mult-VAE and Mult-DAE (Liang, Krishnan, Hoffman & Jebara, "Variational Autoencoders for
Collaborative Filtering", WWW 2018), with an optional ARD hierarchical prior for Mult-VAE.

A user is their binary history row x_u. Encoder [n_items -> hidden -> code] (tanh, dropout on the
L2-normalised row), decoder [code -> hidden -> n_items], softmax over the catalogue:

    Mult-VAE:  loss_u = -sum_i x_ui log softmax(f(z_u))_i + beta * KL(q(z | x_u) || p(z)),
               z_u = mu_u + sigma_u * eps, beta = beta_max * min(1, step / anneal_steps)
    Mult-DAE:  loss_u = -sum_i x_ui log softmax(f(g(x_u)))_i + reg * sum of squared weight matrices

averaged over a batch of users, Adam. `score` folds any history in without refitting: the encoder
(posterior mean) and decoder in numpy, returning logits. ARD (`ard=True`): prior z_d ~ N(0, 1/alpha_d),
alpha_d ~ Gamma(ard_shape, ard_rate), alpha_d set to its closed-form MAP from the encoder means at
each epoch's start; after fit `prior_variance_`, `relevance_`, `relevant_dims_`, `kl_per_dim_`.

Deviations from the authors' code: beta anneals to `beta_max` over `anneal_steps` updates (their
min(0.2, step / 200000) is for ML-20M); `reg` is their lam = 0.01 / batch_size. Design notes and
tuning record: `docs/models/multvae.md`.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, confloat

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresFromHistory, check_fitted, gather_items
from recstack.train.options import FitOptions


class _MultConfig(ModelConfig, TrainingFields):
    embedding_size: PositiveInt = 200  # the latent code (the paper's 200)
    hidden_size: PositiveInt = 600  # the one hidden layer on each side (the paper's 600)
    dropout: confloat(ge=0.0, lt=1.0) = 0.5  # on the normalised input row
    reg: NonNegativeFloat = 0.0  # times the sum of squared weight matrices, added to the batch-mean loss
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    batch_size: PositiveInt = 256  # users per update
    early_stopping_patience: PositiveInt | None = 20


class MultVAEConfig(_MultConfig):
    beta_max: NonNegativeFloat = 1.0  # the KL weight's cap (the paper's anneal_cap; see the docstring)
    anneal_steps: PositiveInt = 500  # updates over which beta grows linearly from 0 to beta_max
    ard: bool = False  # hierarchical ARD prior on the latent variances
    ard_shape: confloat(ge=1.0) = 1.0  # Gamma(shape, rate) hyper-prior on the precisions alpha_d
    ard_rate: PositiveFloat = 1e-4
    relevance_threshold: PositiveFloat = 0.01  # relevant: prior variance above this fraction of the largest


class MultDAEConfig(_MultConfig):
    reg: NonNegativeFloat = 2e-5  # the paper's lam = 0.01 / batch_size


class _Net(torch.nn.Module):
    """Encoder [n_items -> hidden -> latent (x2 for mu, logvar)] and decoder [latent -> hidden -> n_items]."""

    def __init__(self, n_items: int, hidden_size: int, embedding_size: int, dropout: float, variational: bool) -> None:
        super().__init__()
        self.variational = variational
        self.embedding_size = embedding_size
        self.dropout = torch.nn.Dropout(dropout)
        self.encoder_1 = torch.nn.Linear(n_items, hidden_size)
        self.encoder_2 = torch.nn.Linear(hidden_size, 2 * embedding_size if variational else embedding_size)
        self.decoder_1 = torch.nn.Linear(embedding_size, hidden_size)
        self.decoder_2 = torch.nn.Linear(hidden_size, n_items)
        for layer in (self.encoder_1, self.encoder_2, self.decoder_1, self.decoder_2):
            # the authors' initialisation: Xavier-uniform weights, N(0, 0.001^2) biases
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.normal_(layer.bias, std=0.001)
        # 1 / alpha_d of the ARD prior; ones = the standard N(0, I) prior. A buffer, so the
        # trainer's best-state restore brings back the prior of the best epoch with the weights.
        self.register_buffer("prior_variance", torch.ones(embedding_size))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.dropout(F.normalize(x, dim=1))
        h = torch.tanh(self.encoder_1(h))
        h = self.encoder_2(h)
        if not self.variational:
            return torch.tanh(h), None
        return h[:, :self.embedding_size], h[:, self.embedding_size:]  # mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder_2(torch.tanh(self.decoder_1(z)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits, mu, logvar); z is sampled while training, the mean otherwise."""
        mu, logvar = self.encode(x)
        z = mu
        if self.variational and self.training:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decode(z), mu, logvar

    def weights(self) -> dict[str, np.ndarray]:
        """float32 numpy copies, (in, out) matrices, named as the fitted attributes."""
        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().copy()

        out = {}
        for name in ("encoder_1", "encoder_2", "decoder_1", "decoder_2"):
            layer = getattr(self, name)
            out[f"{name}_weight_"] = np.ascontiguousarray(array(layer.weight).T)
            out[f"{name}_bias_"] = array(layer.bias)
        return out


def multinomial_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-mean_u sum_i x_ui log softmax(logits_u)_i (the paper's multinomial log-likelihood)."""
    return -(F.log_softmax(logits, dim=1) * x).sum(dim=1).mean()


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, prior_variance: torch.Tensor | None = None) -> torch.Tensor:
    """Per-user, per-dimension KL(N(mu, exp(logvar)) || N(0, prior_variance)); (B, d)."""
    if prior_variance is None:
        return 0.5 * (-logvar + torch.exp(logvar) + mu.pow(2) - 1.0)
    return 0.5 * (torch.log(prior_variance) - logvar + (torch.exp(logvar) + mu.pow(2)) / prior_variance - 1.0)


def _normalised_rows(rows: sp.csr_matrix) -> sp.csr_matrix:
    rows = sp.csr_matrix(rows, dtype=np.float32, copy=True)
    rows.data[:] = 1.0  # binary history
    norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0  # empty histories stay zero
    return sp.csr_matrix(sp.diags(1.0 / norms.astype(np.float32)) @ rows)


def _encode(w: dict[str, np.ndarray], rows: sp.csr_matrix, embedding_size: int) -> np.ndarray:
    """Posterior mean (VAE) or code (DAE) of the given history rows, in numpy."""
    x = _normalised_rows(rows)
    h = np.tanh(np.asarray(x @ w["encoder_1_weight_"]) + w["encoder_1_bias_"])
    h = h @ w["encoder_2_weight_"] + w["encoder_2_bias_"]
    if h.shape[1] == embedding_size:  # deterministic (DAE) code
        return np.tanh(h)
    return h[:, :embedding_size]


def _binary(train: Interactions) -> sp.csr_matrix:
    """The training matrix with every stored entry 1: the multinomial counts are 0/1."""
    matrix = train.matrix().astype(np.float32)
    matrix.data[:] = 1.0
    return matrix


def _scores(w: dict[str, np.ndarray], users: np.ndarray, history: Interactions, items: np.ndarray | None) -> np.ndarray:
    n_items = len(w["decoder_2_bias_"])
    if history.n_items != n_items:
        raise RecstackError(
            f"the history has {history.n_items} items but the model was fitted on {n_items}; "
            "score with interactions that share the training item vocabulary"
        )
    users = np.asarray(users, dtype=np.int64)
    matrix = history.matrix()
    known = users < matrix.shape[0]
    rows = sp.csr_matrix((len(users), n_items), dtype=np.float32)
    if known.all():
        rows = matrix[users]
    elif known.any():  # users beyond the history's vocabulary have an empty history
        rows = sp.vstack([matrix[users[known]], sp.csr_matrix((int((~known).sum()), n_items))]).tocsr()
        order = np.concatenate([np.flatnonzero(known), np.flatnonzero(~known)])
        rows = rows[np.argsort(order)]
    z = _encode(w, rows, len(w["decoder_1_weight_"]))
    h = np.tanh(z @ w["decoder_1_weight_"] + w["decoder_1_bias_"])
    logits = h @ w["decoder_2_weight_"] + w["decoder_2_bias_"]
    return np.ascontiguousarray(gather_items(logits, items), dtype=np.float32)


_WEIGHTS = tuple(f"{layer}_{kind}_" for layer in ("encoder_1", "encoder_2", "decoder_1", "decoder_2")
                 for kind in ("weight", "bias"))


class _MultAutoencoder(ScoresFromHistory, TorchRecommender):
    """Shared fit/score of Mult-VAE and Mult-DAE."""

    _variational: bool = False

    def fit(self, train: Interactions, valid: Interactions | None = None, *,
            options: FitOptions | None = None) -> Self:
        super().fit(train, valid, options=options)
        if self._variational and self.config.ard:
            matrix = _binary(train)
            self._store_relevance(matrix[np.flatnonzero(np.diff(matrix.indptr) > 0)])
        return self

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        self._rng = rng
        self._matrix = _binary(train)
        self._active = np.flatnonzero(np.diff(self._matrix.indptr) > 0)  # users with no events carry no signal
        self._net = _Net(train.n_items, c.hidden_size, c.embedding_size, c.dropout, self._variational)
        self._ard = self._variational and c.ard
        self._step = 0  # updates so far: the KL annealing clock
        return self._net

    def _dense(self, users: np.ndarray) -> np.ndarray:
        return self._matrix[users].toarray()

    def _update_prior(self) -> None:
        # closed-form MAP of alpha_d under Gamma(shape, rate) given the encoder means of all
        # training users; alpha's posterior mode is (shape - 1 + N/2) / (rate + sum mu^2 / 2)
        c, net, active = self.config, self._net, self._active
        device = net.prior_variance.device
        was_training = net.training
        net.eval()
        total = torch.zeros(c.embedding_size, dtype=torch.float64, device=device)
        with torch.no_grad():
            for start in range(0, len(active), 1024):
                x = torch.from_numpy(self._dense(active[start:start + 1024])).to(device)
                mu, _ = net.encode(x)
                total += mu.double().pow(2).sum(0)
        alpha = (c.ard_shape - 1.0 + len(active) / 2.0) / (c.ard_rate + total / 2.0)
        net.prior_variance.copy_((1.0 / alpha).float())
        net.train(was_training)

    def batches(self):
        batch_size = self.config.batch_size
        if self._ard and self._step > 0:  # the first epoch starts from the standard prior
            self._update_prior()
        order = self._rng.permutation(self._active)
        for start in range(0, len(order), batch_size):
            yield (self._dense(order[start:start + batch_size]),)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        c = self.config
        (x,) = batch
        logits, mu, logvar = module(x)
        loss = multinomial_nll(logits, x)
        if module.variational:
            beta = c.beta_max * min(1.0, self._step / c.anneal_steps)
            prior = module.prior_variance if self._ard else None
            loss = loss + beta * gaussian_kl(mu, logvar, prior).sum(1).mean()
        if c.reg > 0:
            weights = (module.encoder_1.weight, module.encoder_2.weight, module.decoder_1.weight,
                       module.decoder_2.weight)
            loss = loss + c.reg * sum(w.pow(2).sum() for w in weights)
        self._step += 1
        return loss

    def export(self, module: _Net) -> dict[str, np.ndarray]:
        fitted = module.weights()
        if self._ard:  # the prior of the best epoch, restored with the weights (a buffer)
            fitted["prior_variance_"] = module.prior_variance.detach().to("cpu", torch.float32).numpy().copy()
        return fitted

    def _store_relevance(self, rows: sp.csr_matrix) -> None:
        c = self.config
        variance = self.prior_variance_
        w = {k: getattr(self, k) for k in _WEIGHTS}
        x = _normalised_rows(rows)
        h = np.tanh(np.asarray(x @ w["encoder_1_weight_"]) + w["encoder_1_bias_"])
        h = h @ w["encoder_2_weight_"] + w["encoder_2_bias_"]
        mu, logvar = h[:, :c.embedding_size], h[:, c.embedding_size:]
        kl = 0.5 * (np.log(variance) - logvar + (np.exp(logvar) + mu**2) / variance - 1.0)
        self.kl_per_dim_ = kl.mean(0).astype(np.float32)
        self.relevance_ = (variance / variance.max()).astype(np.float32)
        self.relevant_dims_ = np.flatnonzero(self.relevance_ > c.relevance_threshold).astype(np.int64)
        self.relevant_dims_count_ = int(len(self.relevant_dims_))

    def embed(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The latent code (VAE: posterior mean) of `users` from their rows in `history`."""
        check_fitted(self, *_WEIGHTS)
        rows = history.matrix()[np.asarray(users, dtype=np.int64)]
        return _encode({k: getattr(self, k) for k in _WEIGHTS}, rows, self.config.embedding_size).astype(np.float32)

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, *_WEIGHTS)
        return _scores({k: getattr(self, k) for k in _WEIGHTS}, users, history, items)


class MultVAE(_MultAutoencoder):
    """Variational autoencoder with a multinomial likelihood and KL annealing (optionally an ARD prior)."""

    Config = MultVAEConfig
    _variational = True


class MultDAE(_MultAutoencoder):
    """Denoising autoencoder with a multinomial likelihood (dropout-corrupted input, L2 on weights)."""

    Config = MultDAEConfig
    _variational = False
