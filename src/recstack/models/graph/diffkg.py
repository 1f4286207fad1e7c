"""DiffKG (Jiang, Yang, Xia and Huang, "DiffKG: Knowledge Graph Diffusion Model for Recommendation",
WSDM 2024; authors' code HKUDS/DiffKG).

Items are encoded from the KG by relation-aware attention, alpha(h, r, t) = softmax_h
LeakyReLU(([e_h || e_t] W) . e_r), then propagated with free user embeddings LightGCN-style on
D^-1/2 (A + I) D^-1/2 (layers summed). A diffusion model learns each entity's KG adjacency row x_0:
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, an MLP predicts x_0, L_diff = (1 - e) (SNR(t-1) - SNR(t))
mse(x_0, x0_hat) + e mse(x0_hat[:, items] R^T E_U, e_h) (the collaborative KG convolution term). Each
epoch the denoiser rebuilds the KG (top-k predicted links that are KG edges, symmetrised, a random
keep_rate of them); L = BPR on the denoised view + ssl_weight InfoNCE(original-KG view, denoised view)
over users and items + reg ||Theta||^2.

Deviations: one Adam for both parts (disjoint parameters: the same as the authors' two); the denoised
KG is a mask in the state dict, so a restored best epoch scores with its own KG; `diffuse_rows: items`
is an option for small machines. Notes: docs/models/diffkg.md.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from recstack.data.dataset import KnowledgeGraph
from recstack.data.interactions import Interactions
from recstack.models.kernels.graph import PropagatedFactors, edge_softmax, sparse_tensor, symmetric_matmul
from recstack.models.kernels.side import KnowledgeGraphInput
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig
from recstack.train.indexing import gather_rows
from recstack.train.losses import bpr_loss


class DiffKGConfig(ModelConfig, TrainingFields):
    embedding_size: PositiveInt = 64
    n_layers: NonNegativeInt = 2  # LightGCN layers on the user-item graph
    kg_layers: PositiveInt = 1  # relation-aware attention hops on the KG
    dropout: NonNegativeFloat = 0.1  # message dropout after each KG hop
    residual: NonNegativeFloat = 0.5  # res_lambda: r <- residual * r + e per KG hop
    triplets_per_head: PositiveInt | None = 10  # edges a head keeps in the original-KG view (None: all)
    learning_rate: PositiveFloat = 1e-3
    reg: NonNegativeFloat = 1e-7  # times the squared norm of every embedding and W, per step
    ssl_weight: NonNegativeFloat = 0.1  # weight of the InfoNCE between the two KG views
    temperature: PositiveFloat = 0.1
    rank_on: Literal["denoised", "original"] = "denoised"  # the view BPR and scoring use (authors' cl_pattern)
    # the diffusion model
    denoiser_dims: tuple[PositiveInt, ...] = (1000,)  # hidden sizes of the MLP denoiser
    time_embedding_size: PositiveInt = 10
    denoiser_dropout: NonNegativeFloat = 0.5  # on the (normalised) noisy row, training only
    diffusion_steps: PositiveInt = 5
    noise_scale: NonNegativeFloat = 0.1
    noise_min: PositiveFloat = 1e-4
    noise_max: PositiveFloat = 0.02
    sampling_steps: NonNegativeInt = 0  # noise steps added before the rebuild's reverse pass (0: none)
    # whose KG rows are diffused and rebuilt: every entity's (the paper) or the items' only, which is
    # n_entities / n_items times cheaper and, with kg_layers=1, still decides every item's neighbourhood
    # except entity rows' picks of an item (the row width stays n_entities)
    diffuse_rows: Literal["entities", "items"] = "entities"
    ukgc_weight: NonNegativeFloat = 0.5  # e_loss: the share of L_ukgc in the diffusion loss
    rebuild_k: PositiveInt = 1  # predicted links kept per entity row
    keep_rate: PositiveFloat = 0.5  # share of the rebuilt KG's edges kept each epoch
    epochs: PositiveInt = 25  # the authors' default; early stopping may end it sooner
    batch_size: PositiveInt = 1024  # BPR triples (and diffusion rows unless diffusion_batch_size is set)
    diffusion_batch_size: PositiveInt | None = None  # KG rows per denoiser step; None: batch_size (authors')
    n_negatives: PositiveInt = 1
    item_kg_columns: tuple[str, ...] = ()  # item-table columns added as (item, column, value) triples

    @field_validator("dropout", "denoiser_dropout")
    @classmethod
    def _below_one(cls, value: float) -> float:
        if value >= 1:
            raise ValueError("dropout rates must be below 1")
        return value

    @model_validator(mode="after")
    def _schedule(self) -> Self:
        if self.ukgc_weight > 1:
            raise ValueError("ukgc_weight is a share of the diffusion loss: it must lie in [0, 1]")
        if self.keep_rate > 1:
            raise ValueError("keep_rate must lie in (0, 1]")
        if self.noise_min > self.noise_max:
            raise ValueError(f"noise_min ({self.noise_min}) must not exceed noise_max ({self.noise_max})")
        if self.noise_scale * self.noise_max >= 1:
            raise ValueError("noise_scale * noise_max must be below 1 (it is the largest 1 - alpha_bar)")
        if self.sampling_steps > self.diffusion_steps:
            raise ValueError(f"sampling_steps ({self.sampling_steps}) must not exceed diffusion_steps "
                             f"({self.diffusion_steps})")
        return self


def item_entity_graph(n_items: int, item_entity: np.ndarray | None, kg: KnowledgeGraph | None) -> dict:
    """The KG in entity space (items first, then the KG's other entities): every triple and its inverse
    (relation r + n_relations), one edge per (head, tail) pair (the first relation, as the authors'
    code), sorted by head; plus the entity and relation counts."""
    if kg is None or not len(kg):
        empty = np.zeros(0, dtype=np.int64)
        return {"head": empty, "relation": empty, "tail": empty, "n_entities": n_items, "n_relations": 1}
    node_of = np.full(len(kg.entities), -1, dtype=np.int64)
    linked = np.flatnonzero(item_entity >= 0)
    node_of[item_entity[linked]] = linked  # an entity linked to two items keeps the last
    free = np.flatnonzero(node_of < 0)
    node_of[free] = n_items + np.arange(len(free))
    n_entities, n_relations = n_items + len(free), len(kg.relations)
    h, t, r = node_of[kg.head], node_of[kg.tail], np.asarray(kg.relation, dtype=np.int64)
    head, tail, relation = np.r_[h, t], np.r_[t, h], np.r_[r, r + n_relations]
    _, first = np.unique(head * n_entities + tail, return_index=True)  # sorted by (head, tail)
    return {"head": head[first], "relation": relation[first], "tail": tail[first], "n_entities": n_entities,
            "n_relations": 2 * n_relations}


def self_loop_adjacency(matrix: sp.spmatrix) -> sp.csr_matrix:
    """D^-1/2 (A + I) D^-1/2 of the bipartite graph of a binarised (users x items) matrix, users first
    (the authors' LightGCN keeps the self-loop)."""
    r = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    r.eliminate_zeros()
    r.data[:] = 1.0
    n = sum(r.shape)
    adjacency = sp.bmat([[sp.csr_matrix((r.shape[0],) * 2), r], [r.T, sp.csr_matrix((r.shape[1],) * 2)]],
                        format="csr") + sp.identity(n, format="csr")
    scale = sp.diags(1.0 / np.sqrt(np.asarray(adjacency.sum(axis=1)).ravel()))
    out = (scale @ adjacency @ scale).tocsr()
    out.sort_indices()
    return out


def diffusion_schedule(c: DiffKGConfig) -> dict[str, np.ndarray]:
    """Linear variance schedule 1 - alpha_bar_t from noise_scale * noise_min to noise_scale * noise_max,
    betas derived from it (beta_0 fixed at 1e-4), and the posterior-mean coefficients of q(x_{t-1} | x_t, x_0)."""
    variance = np.linspace(c.noise_scale * c.noise_min, c.noise_scale * c.noise_max, c.diffusion_steps)
    alpha_bar = 1 - variance
    betas = np.r_[1 - alpha_bar[0], np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)]
    betas[0] = 1e-4
    alphas_cumprod = np.cumprod(1 - betas)
    previous = np.r_[1.0, alphas_cumprod[:-1]]
    return {"sqrt_abar": np.sqrt(alphas_cumprod), "sqrt_one_minus_abar": np.sqrt(1 - alphas_cumprod),
            "snr": alphas_cumprod / (1 - alphas_cumprod),
            "mean_x0": betas * np.sqrt(previous) / (1 - alphas_cumprod),
            "mean_xt": (1 - previous) * np.sqrt(1 - betas) / (1 - alphas_cumprod)}


class _Denoiser(torch.nn.Module):
    """MLP x0_hat = f([norm(x_t) || W_t emb(t)]): tanh between layers, linear output (authors' Denoise)."""

    def __init__(self, width: int, dims: tuple[int, ...], time_size: int, dropout: float) -> None:
        super().__init__()
        self.time_size = time_size
        self.time = torch.nn.Linear(time_size, time_size)
        sizes = [width + time_size, *dims, width]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.dropout = torch.nn.Dropout(dropout)
        for layer in [self.time, *self.layers]:  # the authors' Xavier-normal weights, near-zero biases
            torch.nn.init.normal_(layer.weight, std=math.sqrt(2.0 / sum(layer.weight.shape)))
            torch.nn.init.normal_(layer.bias, std=1e-3)

    def forward(self, x: torch.Tensor, t: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        half = self.time_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
        angles = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(angles), torch.sin(angles)], -1)
        if self.time_size % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], -1)
        x = F.normalize(x, dim=-1)
        if dropout:
            x = self.dropout(x)
        h = torch.cat([x, self.time(emb)], -1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.tanh(h)
        return h


class _Net(torch.nn.Module):
    """User, entity and relation embeddings, the KG attention, the user-item graph, the denoiser, and
    the KG's edges with two masks: `sampled` (the original view) and `denoised` (the latest rebuild)."""

    def __init__(self, n_users: int, n_items: int, graph: dict, adjacency: torch.Tensor, interactions: torch.Tensor,
                 sampled: np.ndarray, c: DiffKGConfig) -> None:
        super().__init__()
        self.n_users, self.n_items, self.n_entities = n_users, n_items, graph["n_entities"]
        self.c = c
        d = c.embedding_size
        self.user = torch.nn.Parameter(torch.empty(n_users, d))
        self.entity = torch.nn.Parameter(torch.empty(self.n_entities, d))
        self.relation = torch.nn.Parameter(torch.empty(graph["n_relations"], d))
        self.attention = torch.nn.Parameter(torch.empty(2 * d, d))
        for weight in (self.user, self.entity, self.relation):
            torch.nn.init.xavier_uniform_(weight)
        torch.nn.init.xavier_uniform_(self.attention, gain=torch.nn.init.calculate_gain("relu"))
        self.dropout = torch.nn.Dropout(c.dropout)
        self.denoiser = _Denoiser(self.n_entities, c.denoiser_dims, c.time_embedding_size, c.denoiser_dropout)
        as_long = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
        for name in ("head", "relation", "tail"):
            self.register_buffer(f"edge_{name}", as_long(graph[name]), persistent=False)
        self.register_buffer("sampled", torch.from_numpy(sampled), persistent=False)
        # persistent: the trainer's best-epoch restore brings back the KG that epoch scored with
        self.register_buffer("denoised", torch.ones(len(graph["head"]), dtype=torch.bool))
        self.register_buffer("adjacency", adjacency, persistent=False)
        self.register_buffer("interactions", interactions, persistent=False)  # R (users x items), binary
        for name, values in diffusion_schedule(c).items():
            self.register_buffer(name, torch.from_numpy(values.astype(np.float32)), persistent=False)

    def kg_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Dense rows of the binary KG adjacency (B, n_entities): x_0 of the diffusion."""
        out = torch.zeros(len(rows), self.n_entities, device=rows.device)
        position = torch.full((self.n_entities,), -1, dtype=torch.long, device=rows.device)
        position[rows] = torch.arange(len(rows), device=rows.device)
        at = position[self.edge_head]
        keep = at >= 0
        out[at[keep], self.edge_tail[keep]] = 1.0
        return out

    def kg_embeddings(self, mask: torch.Tensor, dropout: bool) -> torch.Tensor:
        """Relation-aware attention over the KG edges in `mask`, with the residual sum over hops."""
        head, relation, tail = self.edge_head[mask], self.edge_relation[mask], self.edge_tail[mask]
        entity, total = self.entity, self.entity
        for _ in range(self.c.kg_layers):
            pair = torch.cat([gather_rows(entity, head), gather_rows(entity, tail)], -1)
            logits = F.leaky_relu(((pair @ self.attention) * gather_rows(self.relation, relation)).sum(-1), 0.2)
            weights = edge_softmax(logits, head, self.n_entities)
            messages = gather_rows(entity, tail) * weights[:, None]
            entity = entity + torch.zeros_like(entity).index_add_(0, head, messages)
            if dropout:
                entity = self.dropout(entity)
            entity = F.normalize(entity, dim=1)
            total = self.c.residual * total + entity
        return total

    def propagate(self, view: str, dropout: bool = True) -> torch.Tensor:
        """(n_users + n_items, d): the KG items beside the users, LightGCN layers 0..L summed."""
        mask = self.denoised if view == "denoised" else self.sampled
        layer = torch.cat([self.user, self.kg_embeddings(mask, dropout)[:self.n_items]])
        total = layer
        for _ in range(self.c.n_layers):
            layer = symmetric_matmul(self.adjacency, layer)
            total = total + layer
        return total

    def diffusion_loss(self, rows: torch.Tensor) -> torch.Tensor:
        """(1 - e_loss) L_dm + e_loss L_ukgc on the KG rows of entities `rows`; the embeddings are targets."""
        c = self.c
        x0 = self.kg_rows(rows)
        t = torch.randint(0, c.diffusion_steps, (len(rows),), device=rows.device)
        x_t = self.sqrt_abar[t, None] * x0 + self.sqrt_one_minus_abar[t, None] * torch.randn_like(x0) \
            if c.noise_scale > 0 else x0
        predicted = self.denoiser(x_t, t)
        weight = torch.where(t == 0, torch.ones_like(self.snr[t]), self.snr[(t - 1).clamp(min=0)] - self.snr[t])
        dm = (weight * ((x0 - predicted) ** 2).mean(-1)).mean()
        # x0_hat[:, items] R^T E_U, with R^T E_U formed first (the same product, far cheaper)
        users = self.user.detach()
        item_users = (self.interactions.transpose(0, 1) @ users) if self.n_users else users.new_zeros(
            self.n_items, users.shape[1])
        ukgc = ((predicted[:, :self.n_items] @ item_users - self.entity.detach()[rows]) ** 2).mean(-1).mean()
        return (1 - c.ukgc_weight) * dm + c.ukgc_weight * ukgc

    @torch.no_grad()
    def rebuild(self, batch_size: int, generator: torch.Generator | None = None) -> None:
        """The denoised KG: each entity's top-k predicted links that are KG edges, with their reverse
        edges, then a random keep_rate of them (the authors' per-epoch rebuild)."""
        c = self.c
        device = self.entity.device
        if not len(self.edge_head):
            return
        heads = torch.unique(self.edge_head)  # rows without edges cannot yield a KG edge
        if c.diffuse_rows == "items":
            heads = heads[heads < self.n_items]
        chosen = []
        for start in range(0, len(heads), batch_size):
            rows = heads[start:start + batch_size]
            x = self.kg_rows(rows)
            if c.sampling_steps > 0:
                t = torch.full((len(rows),), c.sampling_steps - 1, device=device)
                x = self.sqrt_abar[t, None] * x + self.sqrt_one_minus_abar[t, None] * torch.randn_like(x)
            for step in reversed(range(c.diffusion_steps)):  # posterior means only, no sampled noise
                t = torch.full((len(rows),), step, device=device)
                x = self.mean_x0[step] * self.denoiser(x, t, dropout=False) + self.mean_xt[step] * x
            top = torch.topk(x, min(c.rebuild_k, self.n_entities), dim=1).indices
            chosen.append(rows[:, None].expand_as(top).reshape(-1) * self.n_entities + top.reshape(-1))
        chosen = torch.cat(chosen)
        key = self.edge_head * self.n_entities + self.edge_tail
        reverse = self.edge_tail * self.n_entities + self.edge_head
        picked = torch.isin(key, chosen) | torch.isin(reverse, chosen)
        keep = torch.rand(len(key), generator=generator, device="cpu").to(device) < c.keep_rate
        self.denoised.copy_(picked & keep)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            final = self.propagate(self.c.rank_on, dropout=False).to("cpu", torch.float32).numpy().copy()
        return final[:self.n_users], final[self.n_users:]


def info_nce_all(view1: torch.Tensor, view2: torch.Tensor, nodes: torch.Tensor, temperature: float) -> torch.Tensor:
    """-log exp(<z1_n, z2_n>/tau) / sum_m exp(<z1_n, z2_m>/tau) over every node m of the view (cosine)."""
    z1, z2 = F.normalize(gather_rows(view1, nodes), dim=1), F.normalize(view2, dim=1)
    return F.cross_entropy(z1 @ z2.T / temperature, nodes)


def sample_per_head(head: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """A mask keeping at most `limit` random edges of each head (`head` sorted)."""
    if limit is None or not len(head):
        return np.ones(len(head), dtype=bool)
    order = np.lexsort((rng.random(len(head)), head))
    starts = np.searchsorted(head[order], head[order], side="left")
    keep = np.zeros(len(head), dtype=bool)
    keep[order[np.arange(len(head)) - starts < limit]] = True
    return keep


class DiffKG(KnowledgeGraphInput, PropagatedFactors, TorchRecommender):
    """LightGCN on KG-attended items, with a diffusion-denoised KG view contrasted with the original."""

    Config = DiffKGConfig

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        matrix = self.sample_pairs(train, rng)
        item_entity, kg = self.knowledge(train)
        if kg is None or not len(kg):
            warnings.warn("DiffKG has no knowledge graph (dataset.kg is empty and item_kg_columns is unset): "
                          "items keep free embeddings and the diffusion model has nothing to learn", stacklevel=3)
        graph = item_entity_graph(train.n_items, item_entity, kg)
        binary = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        binary.eliminate_zeros()
        binary.data[:] = 1.0
        self._module = _Net(train.n_users, train.n_items, graph, sparse_tensor(self_loop_adjacency(matrix)),
                            sparse_tensor(binary).to_sparse_coo(),
                            sample_per_head(graph["head"], c.triplets_per_head, rng), c)
        self._rng = rng
        self._generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return self._module

    def batches(self):
        """One epoch: diffusion batches over every entity's KG row, the KG rebuild, then the BPR batches."""
        module = self._module
        if len(module.edge_head):
            order = self._rng.permutation(module.n_entities if self.config.diffuse_rows == "entities"
                                          else module.n_items)
            size = self.config.diffusion_batch_size or self.config.batch_size
            for start in range(0, len(order), size):
                yield "diffusion", order[start:start + size]
            module.rebuild(self.config.batch_size, self._generator)  # after the epoch's last denoiser step
        for users, pos, neg in self._pairs():
            yield "cf", users, pos, neg

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        if batch[0] == "diffusion":
            return module.diffusion_loss(batch[1])
        c = self.config
        _, users, pos, neg = batch
        ranked = module.propagate(c.rank_on)
        other = module.propagate("original" if c.rank_on == "denoised" else "denoised")
        e_u, e_i = gather_rows(ranked, users), gather_rows(ranked, module.n_users + pos)
        e_j = gather_rows(ranked, module.n_users + neg)
        loss = bpr_loss((e_u * e_i).sum(-1), (e_u.unsqueeze(1) * e_j).sum(-1))
        if c.ssl_weight > 0:
            n = module.n_users
            loss = loss + c.ssl_weight * (info_nce_all(other[n:], ranked[n:], pos, c.temperature)
                                          + info_nce_all(other[:n], ranked[:n], users, c.temperature))
        if c.reg > 0:
            loss = loss + c.reg * sum(p.pow(2).sum() for p in (module.user, module.entity, module.relation,
                                                                module.attention))
        return loss
