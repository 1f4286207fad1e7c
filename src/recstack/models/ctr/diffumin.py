"""DiffuMIN (Lai et al., RecSys 2025, arXiv 2508.15311): diffusion-driven multi-interest modelling of long
behaviour sequences for CTR.

Input: the behaviours E (l x d, embedded with the item_id field's table, shared with the target item
e_s) and the other fields. Short-term interest: a Transformer encoder over the latest k behaviours and
e_s; its output at e_s is e_s*. OMIE: e_s' = e_s W (d -> c d), reshaped d x c and QR-decomposed, gives c
orthonormal interest channels O; A = E O; each behaviour is routed to its most relevant channel and
a channel keeps its top-p share of behaviours; interest r_j = mean_l A_lj m_lj e_l. DMIG: DDPM over
the normalised interests r^_j (linear beta, T steps), a denoiser of self-attention over the c interests
(the context) and cross-attention to channel o_j predicts r^_j from its noised copy; the augmented
interest r*_j is generated from r^_j noised to step T_infer, denoised T_infer steps. CMIC: InfoNCE
between projected r^_j and r*_j over the batch (temperature tau). Prediction: MLP([r; r*; e_s*; e_s;
e_other]); loss = BCE + lambda_1 L_diffusion + lambda_2 L_contrastive.

Defaults follow the authors' code (github.com/laiweijiang/DiffuMIN: c = 4 channels, 2 blocks of 2
heads, FFN x3, T = 1000, beta 1e-4..0.02, 10 inference steps, tau = 0.05, lambda_1 = 0.01,
lambda_2 = 0.001). Deviations, each for a reason given in docs/models/diffumin.md: the denoiser's output
is read as x_0 in both training and sampling (the code's sampler reads it as noise); sampling starts
at step T_infer, the step it denoises from (the code noises to a random step up to T); evaluation is
deterministic (no sampling noise: a prediction must not depend on the batch); an interest is the mean
over the user's real behaviours, not over padding; the prediction MLP is 200-80 ReLU (DIN's, for CPU;
the code's 1024-512-256 Dice); behaviours carry a learned position embedding in the short-term encoder.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from recstack.data.ctr import CTRFeatures, FeatureError
from recstack.models.ctr.base import CTRFields, CTRModel, FieldEmbedding, ModelConfig, mlp


class DiffuMINConfig(ModelConfig, CTRFields):
    n_channels: PositiveInt = 4  # c, the orthogonal interest channels (needs c <= embedding_size)
    top_p: float = Field(0.5, gt=0.0, le=1.0)  # the share of behaviours each channel keeps
    short_len: PositiveInt = 10  # k, the latest behaviours of the short-term Transformer
    n_layers: PositiveInt = 2  # blocks of the short-term encoder and of the denoiser
    n_heads: PositiveInt = 2
    ffn_factor: PositiveInt = 3
    timesteps: PositiveInt = 1000  # T of the forward process
    infer_steps: PositiveInt = 10  # T_infer: reverse steps that generate r*
    beta_start: PositiveFloat = 1e-4
    beta_end: PositiveFloat = 0.02
    temperature: PositiveFloat = 0.05  # tau of the contrastive loss
    diffusion_weight: float = Field(0.01, ge=0.0)  # lambda_1
    contrastive_weight: float = Field(0.001, ge=0.0)  # lambda_2
    hidden_units: list[int] = Field(default_factory=lambda: [200, 80], min_length=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _shapes(self) -> "DiffuMINConfig":
        if self.n_channels > self.embedding_size:
            raise ValueError(f"n_channels {self.n_channels} > embedding_size {self.embedding_size}: a d-dimensional "
                             "space holds at most d orthogonal channels; lower n_channels or raise embedding_size")
        if self.embedding_size % self.n_heads:
            raise ValueError(f"embedding_size {self.embedding_size} is not a multiple of n_heads {self.n_heads}")
        if self.infer_steps > self.timesteps or self.beta_end < self.beta_start or self.beta_end >= 1:
            raise ValueError("need infer_steps <= timesteps and beta_start <= beta_end < 1")
        return self


# ---- pieces with a formula, tested alone ------------------------------------------------------------

def orthogonal_channels(projected: torch.Tensor, n_channels: int) -> torch.Tensor:
    """(B, c d) projected targets -> (B, c, d) channels with orthonormal rows: the Q of a QR
    decomposition of the d x c matrix, the least-squares orthonormal basis of the paper's OMIE. A tiny
    jitter keeps QR differentiable where the projection is rank-deficient (the authors do the same)."""
    b, cd = projected.shape
    matrix = projected.view(b, cd // n_channels, n_channels)
    matrix = matrix + 1e-6 * torch.randn_like(matrix) if projected.requires_grad else matrix
    q, _ = torch.linalg.qr(matrix)  # (B, d, c), orthonormal columns
    return q.transpose(1, 2)


def extract_interests(behaviours: torch.Tensor, mask: torch.Tensor, channels: torch.Tensor,
                      top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """OMIE's interests. behaviours (B, l, d), mask (B, l) real behaviours, channels (B, c, d) ->
    interests (B, c, d) and the relevance A (B, l, c). A behaviour counts for its most relevant channel
    only, and a channel keeps the ceil(top_p * n) behaviours most relevant to it (n real behaviours)."""
    relevance = behaviours @ channels.transpose(1, 2)  # A = E O^T
    b, l, c = relevance.shape
    real = mask.unsqueeze(-1)
    ranked = relevance.masked_fill(~real, float("-inf"))
    routed = torch.nn.functional.one_hot(ranked.argmax(-1), c).bool() & real
    n_real = mask.sum(1)
    keep = torch.ceil(top_p * n_real.float()).long().clamp(min=1)  # per row
    order = ranked.argsort(dim=1, descending=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(l, device=order.device).view(1, l, 1).expand(b, l, c))
    top = position < keep.view(b, 1, 1)
    weight = torch.where(routed & top & real, relevance, torch.zeros_like(relevance))
    interests = (weight.unsqueeze(-1) * behaviours.unsqueeze(2)).sum(1)  # (B, c, d)
    return interests / n_real.clamp(min=1).view(b, 1, 1).float(), relevance


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """CMIC's loss over a batch, per channel: anchor/positive (c, B, d), row i of the anchor against every
    positive of its channel, its own as the positive class: mean of logsumexp_j(s_ij / tau) - s_ii / tau
    with s the cosine similarity."""
    a = torch.nn.functional.normalize(anchor, dim=-1)
    p = torch.nn.functional.normalize(positive, dim=-1)
    similarity = a @ p.transpose(1, 2) / temperature  # (c, B, B)
    return (torch.logsumexp(similarity, -1) - torch.diagonal(similarity, dim1=1, dim2=2)).mean()


class Schedule(torch.nn.Module):
    """DDPM's linear beta schedule and the closed forms DiffuMIN uses (Ho et al., 2020)."""

    def __init__(self, timesteps: int, beta_start: float, beta_end: float) -> None:
        super().__init__()
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas_bar = torch.cumprod(1 - betas, 0)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_bar[:-1]])
        buffers = {"sqrt_ab": alphas_bar.sqrt(), "sqrt_1mab": (1 - alphas_bar).sqrt(),
                   "coef_x0": betas * previous.sqrt() / (1 - alphas_bar),
                   "coef_xt": (1 - previous) * (1 - betas).sqrt() / (1 - alphas_bar),
                   "log_var": torch.log((betas * (1 - previous) / (1 - alphas_bar)).clamp(min=1e-20))}
        for name, value in buffers.items():  # not persistent: recomputed from the config on load
            self.register_buffer(name, value.float(), persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (noise None: its mean, 0)."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        out = self.sqrt_ab[t].view(shape) * x0
        return out if noise is None else out + self.sqrt_1mab[t].view(shape) * noise

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None):
        """x_{t-1} from q(x_{t-1} | x_t, x0): its mean, plus its standard deviation times `noise` (t > 0)."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        mean = self.coef_x0[t].view(shape) * x0 + self.coef_xt[t].view(shape) * xt
        if noise is None:
            return mean
        return mean + (t > 0).float().view(shape) * torch.exp(0.5 * self.log_var[t]).view(shape) * noise


# ---- the network ----------------------------------------------------------------------------------

class _Attention(torch.nn.Module):
    """Scaled dot-product multi-head attention written out: on sequences of 2 to 11 tokens it is several
    times faster on a CPU than torch's fused kernel, whose set-up dominates at that size."""

    def __init__(self, size: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(size, size, bias=False) for _ in range(3))
        self.out = torch.nn.Linear(size, size, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        if memory.shape[1] == 1 and padding is None:  # one key: its softmax weight is 1, the output its value
            return self.out(self.qkv[2](memory)).expand(b, n, d)
        h = self.n_heads
        split = lambda y: y.view(b, y.shape[1], h, d // h).transpose(1, 2)  # noqa: E731 (B, h, n, d/h)
        q, k, v = split(self.qkv[0](x)), split(self.qkv[1](memory)), split(self.qkv[2](memory))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        if padding is not None:
            scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
        return self.out((torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, n, d))


class _Block(torch.nn.Module):
    """Post-norm Transformer block: self-attention, optional cross-attention to a guide, FFN."""

    def __init__(self, size: int, n_heads: int, ffn_factor: int, cross: bool) -> None:
        super().__init__()
        self.attention = _Attention(size, n_heads)
        self.cross = _Attention(size, n_heads) if cross else None
        self.ffn = torch.nn.Sequential(torch.nn.Linear(size, size * ffn_factor), torch.nn.ReLU(),
                                       torch.nn.Linear(size * ffn_factor, size))
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(size, eps=1e-6) for _ in range(3 if cross else 2))

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None,
                guide: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norms[0](x + self.attention(x, x, padding))
        if self.cross is not None:
            x = self.norms[1](x + self.cross(x, guide))
        return self.norms[-1](x + self.ffn(x))


def _time_embedding(t: torch.Tensor, size: int) -> torch.Tensor:
    half = size // 2
    frequency = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / max(half - 1, 1))
    angle = t.float().unsqueeze(-1) * frequency
    return torch.cat([angle.sin(), angle.cos()], -1)


class _DiffuMIN(torch.nn.Module):
    def __init__(self, n_ids: int, n_fields: int, item_field: int, c: DiffuMINConfig) -> None:
        super().__init__()
        d, self.c, self.config, self.item_field = c.embedding_size, c.n_channels, c, item_field
        self.fields = FieldEmbedding(n_ids, d)  # one table: fields, target item and behaviours
        self.project = torch.nn.Linear(d, c.n_channels * d, bias=False)  # W of OMIE
        self.position = torch.nn.Embedding(c.short_len + 1, d)
        self.encoder = torch.nn.ModuleList(_Block(d, c.n_heads, c.ffn_factor, False) for _ in range(c.n_layers))
        self.denoiser = torch.nn.ModuleList(_Block(d, c.n_heads, c.ffn_factor, True) for _ in range(c.n_layers))
        self.time = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.SiLU(), torch.nn.Linear(4 * d, d))
        self.heads = torch.nn.ModuleList(  # CMIC's projection heads, genuine and generated
            torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.ReLU(), torch.nn.Linear(4 * d, d)) for _ in range(2))
        self.schedule = Schedule(c.timesteps, c.beta_start, c.beta_end)
        self.output = mlp([(2 * c.n_channels + 2 + n_fields) * d, *c.hidden_units], c.dropout)
        self.losses: dict[str, torch.Tensor] = {}

    def channels(self, target: torch.Tensor) -> torch.Tensor:
        return orthogonal_channels(self.project(target), self.c)

    def _denoise(self, context: torch.Tensor, x: torch.Tensor, t: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """x0 of every channel's interest: context (B, c, d) holds the genuine interests, x (B, c, d) the
        noised ones; channel j is denoised with the others as its context and o_j as its guide, all c at once
        as B c sequences of c tokens. Returns (B, c, d)."""
        b, c, d = context.shape
        tokens = context.unsqueeze(1).expand(b, c, c, d).clone()  # [b, j] = context with slot j noised
        slot = torch.arange(c, device=x.device)
        tokens[:, slot, slot] = x
        step = self.time(_time_embedding(t, d)).repeat_interleave(c, 0)  # one per row, shared by its channels
        h = tokens.reshape(b * c, c, d) + step.unsqueeze(1)
        g = guide.reshape(b * c, 1, d)
        for block in self.denoiser:
            h = block(h, guide=g)
        return h.view(b, c, c, d)[:, slot, slot]

    def forward(self, index: torch.Tensor, weight: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        e = self.fields(index, weight)  # (B, F, d)
        target = e[:, self.item_field]
        behaviours, mask = self.fields.embedding(sequence), sequence > 0
        b = len(target)

        # short-term interest: the latest k behaviours and the target through the encoder, read at the target
        k = min(cfg.short_len, sequence.shape[1])
        tokens = torch.cat([behaviours[:, -k:], target.unsqueeze(1)], 1) + self.position.weight[-k - 1:]
        padding = torch.cat([~mask[:, -k:], torch.zeros(b, 1, dtype=torch.bool, device=mask.device)], 1)
        h = tokens
        for block in self.encoder:
            h = block(h, padding)
        short = h[:, -1]

        # OMIE: orthonormal channels from the target, interests from the routed behaviours
        channels = self.channels(target)
        interests, _ = extract_interests(behaviours, mask, channels, cfg.top_p)
        genuine = torch.nn.functional.normalize(interests, dim=-1)
        guide = torch.nn.functional.normalize(channels, dim=-1)

        # DMIG: one denoising loss per channel at a random step, and r* generated from step T_infer
        noisy = self.training
        if noisy:
            t = torch.randint(0, cfg.timesteps, (b,), device=target.device)
            x0 = self._denoise(genuine, self.schedule.q_sample(genuine, t, torch.randn_like(genuine)), t, guide)
            self.losses["diffusion"] = torch.nn.functional.mse_loss(x0, genuine)
        start = torch.full((b,), cfg.infer_steps - 1, device=target.device, dtype=torch.long)
        x = self.schedule.q_sample(genuine, start, torch.randn_like(genuine) if noisy else None)
        for step in reversed(range(cfg.infer_steps)):
            t = torch.full((b,), step, device=target.device, dtype=torch.long)
            x0 = self._denoise(genuine, x, t, guide)
            x = self.schedule.posterior(x0, x, t, torch.randn_like(x) if noisy else None)
        generated = x
        if noisy:  # CMIC: the same user's genuine and generated interest of a channel form the positive pair
            self.losses["contrastive"] = info_nce(self.heads[0](genuine).transpose(0, 1),
                                                  self.heads[1](generated).transpose(0, 1), cfg.temperature)

        features = torch.cat([interests.flatten(1), generated.flatten(1), short, target, e.flatten(1)], 1)
        return self.output(features).squeeze(-1)


class DiffuMIN(CTRModel):
    """Orthogonal multi-interest extraction, diffusion-generated interests, contrastive calibration."""

    Config = DiffuMINConfig
    reads_sequences = True

    def check_sequences(self, features: CTRFeatures) -> None:
        if len(features.sequences) != 1:
            names = ", ".join(s.name for s in features.sequences) or "none"
            raise FeatureError(f"DiffuMIN reads exactly one sequence field (the user's items), got {names}; "
                               "give it one, e.g. {name: history, kind: sequence, max_len: 50}, with item_id")

    def build_net(self, n_ids: int, n_fields: int, width: int) -> torch.nn.Module:
        return _DiffuMIN(n_ids, n_fields, self.layout()["item_field"], self.config)

    def batch_loss(self, module: torch.nn.Module, batch) -> torch.Tensor:
        *inputs, label = batch
        logits = module(*inputs)
        c = self.config
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, label)
        loss = loss + c.diffusion_weight * module.losses["diffusion"] + c.contrastive_weight * module.losses["contrastive"]
        if c.reg > 0:
            index, weight = inputs[0], inputs[1]
            vectors = module.fields.embedding(index) * (weight > 0).unsqueeze(-1)
            loss = loss + c.reg * vectors.pow(2).sum() / len(label)
        module.losses = {}
        return loss


__all__ = ["DiffuMIN", "DiffuMINConfig", "extract_interests", "info_nce", "orthogonal_channels"]
