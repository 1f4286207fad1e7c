"""Mult-VAE and Mult-DAE (Liang, Krishnan, Hoffman & Jebara, "Variational Autoencoders for
Collaborative Filtering", WWW 2018), with an optional ARD hierarchical prior for Mult-VAE.

A user is their binary history row x_u over all items. The encoder reads the L2-normalised row
(dropout on the input), [n_items -> hidden_size -> embedding_size] with tanh; the decoder maps the
code back, [embedding_size -> hidden_size -> n_items] with a tanh hidden layer, and a softmax over
the catalogue is the multinomial likelihood:

    Mult-VAE:  loss_u = -sum_i x_ui log softmax(f(z_u))_i + beta * KL(q(z | x_u) || p(z)),
               z_u = mu_u + sigma_u * eps (reparameterised), beta = beta_max * min(1, step / anneal_steps)
    Mult-DAE:  loss_u = -sum_i x_ui log softmax(f(g(x_u)))_i, deterministic code g(x_u) (tanh), plus
               reg * sum of squared weight matrices (biases not penalised)

averaged over a batch of users (the training examples). Adam, learning_rate 1e-3. Scoring is an
autoencoder pass, so any user with a history is folded in without refitting: `score` runs the
encoder (posterior mean, no dropout) and decoder on `history.matrix()[users]` in numpy and returns
the logits (the softmax is monotone per user, so logits rank the same).

Notable choices
- Annealing: beta = beta_max * min(1, step / anneal_steps), step = updates so far. The paper's code
  uses beta = min(0.2, step / 200000) on ML-20M (about 230 updates per epoch), and the paper's
  recipe for choosing the cap is to anneal towards 1 and keep the best point. ml-100k has about 4
  updates per epoch at batch_size 256, so the defaults anneal to beta_max = 1.0 over 500 updates
  and early stopping on the validation metric picks the point of the path (validation preferred
  the cap 1.0 over the paper's 0.2: 0.256 vs 0.245). On small data (the 300-user test fixture)
  beta near 1 collapses the posterior early; there beta_max = 0.2 works.
- Mult-DAE's L2: the paper's code adds lam * sum(W^2) with lam = 0.01 / batch_size; `reg` is that lam
  (default 2e-5 = 0.01 / 500, the paper's batch size).
- The hidden layer before the code is tanh in both models; the code layer is linear (mu, logvar)
  for the VAE and tanh for the DAE, as in the authors' code.
- ARD (`ard=True`, Mult-VAE only): the fixed N(0, I) prior becomes the hierarchical prior
  z_d ~ N(0, 1/alpha_d), alpha_d ~ Gamma(ard_shape, ard_rate) (automatic relevance determination,
  MacKay 1994; for VAE latents, Saha, Joshi & Whitaker, "ARD-VAE: A Statistical Formulation to Find
  the Relevant Latent Dimensions of Variational Autoencoders", arXiv 2501.10901, 2025, which also
  estimates the precisions from the encoded data). At the start of every epoch alpha_d is set to
  its closed-form MAP given the encoder means mu_ud of the N training users,
      alpha_d = (ard_shape - 1 + N / 2) / (ard_rate + sum_u mu_ud^2 / 2),
  and the KL uses that prior: KL_d = 0.5 (log s_d^2 - logvar + (sigma^2 + mu^2) / s_d^2 - 1),
  s_d^2 = 1 / alpha_d. A dimension the decoder does not use has mu_ud ~ 0, so its prior variance
  shrinks, the KL then pins its posterior to zero too, and it collapses for good; used dimensions
  keep a prior variance on the scale of their codes. After fit: `prior_variance_` (1/alpha_d),
  `relevance_` (= prior_variance_ / its maximum), `relevant_dims_` (indices with relevance above
  `relevance_threshold`), `relevant_dims_count_`, and `kl_per_dim_` (mean KL per user, nats, that
  each dimension adds to the objective). Relevance is the prior variance, not the KL: a collapsed
  dimension can still show KL for a while because Adam moves the encoder's log-variance towards the
  shrinking prior variance at a bounded pace, and the prior update makes mean(mu_d^2) / s_d^2 ~ 1
  for every dimension, so the KL does not separate them.

Defaults (chosen on ml-100k VALIDATION: all ratings as positives, per-user random 8:1:1 split,
seed 2020, full ranking, NDCG@10 with train masked; 9 short runs over batch_size {128, 256},
learning_rate {1e-3, 3e-3}, anneal_steps {500, 1000, 2000}, beta_max {0.2, 0.5, 1.0}, reg {2e-5, 1e-4}):
- Mult-VAE: hidden 600, latent 200, dropout 0.5, batch_size 256, learning_rate 1e-3, beta_max 1.0,
  anneal_steps 500 -> validation NDCG@10 = 0.256 (best epoch 91; about 33 s on one busy core); test
  0.297 for information only (BPR-MF 0.316 and ItemKNN 0.294 on the same protocol). With the
  paper's beta_max 0.2: validation 0.245 (anneal 500) / 0.240 (anneal 2000).
- Mult-DAE: same network and optimiser, reg 2e-5 -> validation 0.253 (test 0.298), about 23 s.
- ARD is off by default: on ml-100k it does not help accuracy (validation 0.240 with beta_max 0.2
  and anneal_steps 2000, 159 of 200 dimensions still relevant after 71 epochs; 0.192 with the
  defaults, 34 relevant). On the clustered test fixture (6 user clusters, latent 16, beta_max 0.2)
  it keeps 6 to 8 dimensions over seeds 0-3.
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
from recstack.models.protocol import ModelConfig, SaveLoad, check_fitted, gather_items
from recstack.train.trainer import Trainer, TrainerConfig, seed_everything


class _MultConfig(ModelConfig):
    embedding_size: PositiveInt = 200  # the latent code (the paper's 200)
    hidden_size: PositiveInt = 600  # the one hidden layer on each side (the paper's 600)
    dropout: confloat(ge=0.0, lt=1.0) = 0.5  # on the normalised input row
    learning_rate: PositiveFloat = 1e-3
    reg: NonNegativeFloat = 0.0  # times the sum of squared weight matrices, added to the batch-mean loss
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    batch_size: PositiveInt = 256  # users per update
    early_stopping_patience: PositiveInt | None = 20
    eval_every: PositiveInt = 1
    valid_metric: str = "NDCG@10"
    device: str = "auto"  # cuda when available, else cpu
    verbose: bool = True


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


class _LiveScorer:
    """Scores from the module's current weights (copied once per validation block)."""

    def __init__(self, net: _Net) -> None:
        self.net = net

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _scores(self.net.weights(), users, history, items)


_WEIGHTS = tuple(f"{layer}_{kind}_" for layer in ("encoder_1", "encoder_2", "decoder_1", "decoder_2")
                 for kind in ("weight", "bias"))


class _MultAutoencoder(SaveLoad):
    """Shared fit/score of Mult-VAE and Mult-DAE."""

    _variational: bool = False

    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self:
        c = self.config
        name = type(self).__name__
        if len(train) == 0:
            raise RecstackError(f"{name} cannot be fitted on empty training data; check the filters and split")
        seed_everything(c.seed)
        rng = np.random.default_rng(c.seed)
        matrix = train.matrix().astype(np.float32)
        matrix.data[:] = 1.0  # binary histories: the multinomial counts are 0/1
        active = np.flatnonzero(np.diff(matrix.indptr) > 0)  # users with no events carry no signal
        net = _Net(train.n_items, c.hidden_size, c.embedding_size, c.dropout, self._variational)
        ard = self._variational and c.ard
        step = [0]

        def dense(users: np.ndarray) -> np.ndarray:
            return matrix[users].toarray()

        def update_prior() -> None:
            # closed-form MAP of alpha_d under Gamma(shape, rate) given the encoder means of all
            # training users; alpha's posterior mode is (shape - 1 + N/2) / (rate + sum mu^2 / 2)
            device = net.prior_variance.device
            was_training = net.training
            net.eval()
            total = torch.zeros(c.embedding_size, dtype=torch.float64, device=device)
            with torch.no_grad():
                for start in range(0, len(active), 1024):
                    x = torch.from_numpy(dense(active[start:start + 1024])).to(device)
                    mu, _ = net.encode(x)
                    total += mu.double().pow(2).sum(0)
            alpha = (c.ard_shape - 1.0 + len(active) / 2.0) / (c.ard_rate + total / 2.0)
            net.prior_variance.copy_((1.0 / alpha).float())
            net.train(was_training)

        def batches():
            if ard and step[0] > 0:  # the first epoch starts from the standard prior
                update_prior()
            order = rng.permutation(active)
            for start in range(0, len(order), c.batch_size):
                yield (dense(order[start:start + c.batch_size]),)

        def batch_loss(module: _Net, batch) -> torch.Tensor:
            (x,) = batch
            logits, mu, logvar = module(x)
            loss = multinomial_nll(logits, x)
            if module.variational:
                beta = c.beta_max * min(1.0, step[0] / c.anneal_steps)
                prior = module.prior_variance if ard else None
                loss = loss + beta * gaussian_kl(mu, logvar, prior).sum(1).mean()
            if c.reg > 0:
                weights = (module.encoder_1.weight, module.encoder_2.weight, module.decoder_1.weight,
                           module.decoder_2.weight)
                loss = loss + c.reg * sum(w.pow(2).sum() for w in weights)
            step[0] += 1
            return loss

        trainer = Trainer(TrainerConfig.from_model(c, optimizer="adam"))
        history = trainer.fit(net, batch_loss, batches, _LiveScorer(net), train=train, valid=valid)

        best_epoch = trainer.best_epoch if trainer.best_epoch is not None else len(history)
        self._replace_fitted({**net.weights(), "history_": history, "best_epoch_": best_epoch})
        if ard:
            self._store_relevance(net, matrix[active])
        return self

    def _store_relevance(self, net: _Net, rows: sp.csr_matrix) -> None:
        c = self.config
        variance = net.prior_variance.detach().to("cpu", torch.float32).numpy().copy()
        w = net.weights()
        x = _normalised_rows(rows)
        h = np.tanh(np.asarray(x @ w["encoder_1_weight_"]) + w["encoder_1_bias_"])
        h = h @ w["encoder_2_weight_"] + w["encoder_2_bias_"]
        mu, logvar = h[:, :c.embedding_size], h[:, c.embedding_size:]
        kl = 0.5 * (np.log(variance) - logvar + (np.exp(logvar) + mu**2) / variance - 1.0)
        self.prior_variance_ = variance
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

    def __init__(self, config: MultVAEConfig | None = None) -> None:
        self.config = config or MultVAEConfig()


class MultDAE(_MultAutoencoder):
    """Denoising autoencoder with a multinomial likelihood (dropout-corrupted input, L2 on weights)."""

    Config = MultDAEConfig
    _variational = False

    def __init__(self, config: MultDAEConfig | None = None) -> None:
        self.config = config or MultDAEConfig()
