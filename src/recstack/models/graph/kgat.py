"""KGAT (Wang, He, Cao, Liu and Chua, "KGAT: Knowledge Graph Attention Network for Recommendation",
KDD 2019).

Collaborative knowledge graph (CKG): users, items and KG entities as nodes; user -interact-> item,
the KG's triples, and the inverse of every edge as its own relation. TransR embeds it:
g(h, r, t) = ||W_r e_h + e_r - W_r e_t||^2, L_KG = -log sigmoid(g(h, r, t') - g(h, r, t)) over
corrupted tails t'. Attentive propagation: pi(h, r, t) = (W_r e_t)^T tanh(W_r e_h + e_r), softmaxed
over each head's neighbours, e_N(h) = sum_t pi(h, r, t) e_t; the bi-interaction aggregator
e^(l+1) = LeakyReLU(W1 (e + e_N)) + LeakyReLU(W2 (e * e_N)) (or "gcn": LeakyReLU(W (e + e_N)),
"graphsage": LeakyReLU(W [e || e_N])); e* = [e^(0) || norm(e^(1)) || ... || norm(e^(L))];
score(u, i) = <e*_u, e*_i>; L_CF = BPR on e* + reg * ||batch e*||^2. Each epoch runs the CF batches,
then the KG batches (one Adam optimiser), and recomputes the attention from the current embeddings
without gradient, as the paper's alternating optimisation does. Before any attention, the first epoch
propagates with sum_r D_r^-1 A_r (each relation's neighbours averaged), and users and entities are
Xavier-initialised as two tables, as in the authors' code and RecBole's.

The KG comes from `use_dataset(dataset)` (`dataset.kg`, linked to items by `item_entity`), plus,
with `item_kg_columns`, item-table columns as (item, column, value) triples. Without either KGAT
trains on the user-item part of the CKG alone (and warns). Deviations: message dropout only (no
node dropout); KG batches sample every CKG edge, interactions and inverses included, as the authors'
code does (`kg_loss_triples: ckg`; `kg` keeps the knowledge graph's own triples only, as RecBole's
KGAT does: about a quarter of the KG steps on ml-100k); users without training events score zeros
(never trained). Notes: docs/models/kgat.md.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, field_validator

from recstack.data.dataset import KnowledgeGraph
from recstack.data.interactions import Interactions
from recstack.models.kernels.graph import PropagatedFactors, edge_softmax, graph_bpr_loss
from recstack.models.kernels.side import KnowledgeGraphInput
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig
from recstack.train.indexing import gather_rows


class KGATConfig(ModelConfig, TrainingFields):
    embedding_size: PositiveInt = 64  # e^(0) of users, items and entities
    kg_embedding_size: PositiveInt = 64  # relation space of TransR (W_r: embedding_size x kg_embedding_size)
    layer_sizes: tuple[PositiveInt, ...] = (64, 32, 16)  # one propagation layer each
    aggregator: Literal["bi", "gcn", "graphsage"] = "bi"
    dropout: NonNegativeFloat = 0.1  # message dropout after each layer
    learning_rate: PositiveFloat = 1e-3
    reg: NonNegativeFloat = 1e-5  # CF: times the batch's squared final embedding norms per example
    kg_reg: NonNegativeFloat = 1e-5  # KG: times the squared norms of W_r e_h, e_r, W_r e_t, W_r e_t'
    epochs: PositiveInt = 300  # a maximum: early stopping usually ends training before
    batch_size: PositiveInt = 1024  # CF (user, positive, negative) batches
    kg_batch_size: PositiveInt = 4096  # TransR triple batches
    # the triples TransR's loss samples: every CKG edge (the authors' code) or the KG's own, not inverted
    kg_loss_triples: Literal["ckg", "kg"] = "ckg"
    n_negatives: PositiveInt = 1
    item_kg_columns: tuple[str, ...] = ()  # item-table columns added as (item, column, value) triples

    @field_validator("dropout")
    @classmethod
    def _below_one(cls, value: float) -> float:
        if value >= 1:
            raise ValueError("dropout must be below 1")
        return value


class _Propagate(torch.autograd.Function):
    """A @ x with the fixed attention matrix A; the backward uses the stored transpose (no
    per-call transpose of a sparse CSR tensor)."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, transposed: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(transposed)
        return matrix @ dense

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        transposed, = ctx.saved_tensors
        return None, None, transposed @ grad


def _csr(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(indptr, indices, values, size=(n, n), check_invariants=False)


class _Aggregator(torch.nn.Module):
    def __init__(self, kind: str, size_in: int, size_out: int) -> None:
        super().__init__()
        self.kind = kind
        self.first = torch.nn.Linear(2 * size_in if kind == "graphsage" else size_in, size_out)
        self.second = torch.nn.Linear(size_in, size_out) if kind == "bi" else None
        for layer in (self.first, self.second):
            if layer is not None:
                torch.nn.init.xavier_uniform_(layer.weight)
                torch.nn.init.zeros_(layer.bias)

    def forward(self, ego: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        if self.kind == "graphsage":
            return F.leaky_relu(self.first(torch.cat([ego, neighbours], 1)), 0.2)
        out = F.leaky_relu(self.first(ego + neighbours), 0.2)
        if self.kind == "bi":
            out = out + F.leaky_relu(self.second(ego * neighbours), 0.2)
        return out


class _Net(torch.nn.Module):
    """Node embeddings (users, items, other entities), TransR relations, the aggregator layers and
    the CKG's edges sorted by (head, tail); `update_attention` refreshes the propagation matrix."""

    def __init__(self, n_users: int, n_items: int, n_nodes: int, n_relations: int, head: np.ndarray,
                 relation: np.ndarray, tail: np.ndarray, c: KGATConfig) -> None:
        super().__init__()
        self.n_users, self.n_items, self.n_nodes = n_users, n_items, n_nodes
        self.node = torch.nn.Embedding(n_nodes, c.embedding_size)
        self.relation = torch.nn.Embedding(n_relations, c.kg_embedding_size)
        self.transfer = torch.nn.Parameter(torch.empty(n_relations, c.embedding_size, c.kg_embedding_size))
        # users and entities are two tables in the authors' code and RecBole's, each Xavier-initialised by
        # its own shape: users start ~6x larger than one Xavier draw over the whole node table gives
        for weight in (self.node.weight[:n_users], self.node.weight[n_users:], self.relation.weight, self.transfer):
            torch.nn.init.xavier_uniform_(weight)
        sizes = (c.embedding_size, *c.layer_sizes)
        self.layers = torch.nn.ModuleList(_Aggregator(c.aggregator, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.dropout = torch.nn.Dropout(c.dropout)
        # edges sorted by (head, tail); parallel edges (one pair, several relations) are merged in A
        order = np.lexsort((tail, head))
        head, relation, tail = head[order], relation[order], tail[order]
        pair = head.astype(np.int64) * n_nodes + tail
        starts = np.r_[True, pair[1:] != pair[:-1]]
        group = np.cumsum(starts) - 1
        u_head, u_tail = head[starts].astype(np.int64), tail[starts].astype(np.int64)
        t_order = np.lexsort((u_head, u_tail))  # the transpose: entries sorted by (tail, head)
        as_long = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
        # the first epoch's A: sum_r D_r^-1 A_r, each head's neighbours under one relation averaged
        _, by_relation, counts = np.unique(head.astype(np.int64) * n_relations + relation, return_inverse=True,
                                           return_counts=True)
        relation_means = np.bincount(group, weights=1.0 / counts[by_relation], minlength=int(starts.sum()))
        self.register_buffer("relation_means", torch.from_numpy(relation_means.astype(np.float32)), persistent=False)
        for name, values in (("edge_head", head), ("edge_relation", relation), ("edge_tail", tail),
                             ("edge_group", group), ("t_order", t_order),
                             ("indptr", np.r_[0, np.cumsum(np.bincount(u_head, minlength=n_nodes))]),
                             ("indices", u_tail),
                             ("t_indptr", np.r_[0, np.cumsum(np.bincount(u_tail, minlength=n_nodes))]),
                             ("t_indices", u_head[t_order])):
            self.register_buffer(name, as_long(values), persistent=False)
        self.n_pairs = int(starts.sum())
        self.matrix: torch.Tensor | None = None
        self.transposed: torch.Tensor | None = None
        self.stale = True  # the attention predates the last optimiser step
        # 1 once training has begun: the first epoch propagates with `relation_means`, every later one with
        # the attention (kept in the state dict, so a resumed fit does not start over with the means)
        self.register_buffer("started", torch.zeros(()))

    def transr(self, head: torch.Tensor, relation: torch.Tensor, tail: torch.Tensor):
        """W_r e_h, e_r, W_r e_t for index tensors of one shape (B,): one matmul per relation present
        (gathering a (B, d, k) stack of W_r instead is memory-bound and 10x slower)."""
        order = torch.argsort(relation, stable=True)
        counts = torch.bincount(relation[order], minlength=self.transfer.shape[0]).tolist()
        # one gather (one dense gradient of the node table), then slices per relation
        rows = gather_rows(self.node.weight, torch.stack([head[order], tail[order]]))  # (2, B, d)
        # split / unbind: one backward each (indexing would build a dense zero gradient per relation)
        transfer = self.transfer.unbind(0)
        present = [r for r, count in enumerate(counts) if count]
        groups = torch.split(rows, [counts[r] for r in present], dim=1)
        parts = [group @ transfer[r] for r, group in zip(present, groups)]
        projected = torch.cat(parts, 1) if parts else rows.new_zeros((2, 0, self.transfer.shape[2]))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        projected = projected[:, inverse]
        return projected[0], gather_rows(self.relation.weight, relation), projected[1]

    def plausibility(self, head: torch.Tensor, relation: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        """TransR's g(h, r, t) = ||W_r e_h + e_r - W_r e_t||^2 (lower is more plausible)."""
        h, r, t = self.transr(head, relation, tail)
        return ((h + r - t) ** 2).sum(-1)

    def attention_scores(self, chunk: int = 1 << 16) -> torch.Tensor:
        """pi(h, r, t) = (W_r e_t)^T tanh(W_r e_h + e_r) for every CKG edge, before the softmax."""
        out = []
        for start in range(0, len(self.edge_head), chunk):
            s = slice(start, start + chunk)
            h, r, t = self.transr(self.edge_head[s], self.edge_relation[s], self.edge_tail[s])
            out.append((t * torch.tanh(h + r)).sum(-1))
        return torch.cat(out) if out else torch.zeros(0, device=self.node.weight.device)

    def attention(self) -> torch.Tensor:
        """Softmax over each head's neighbours, per edge (sorted by head, tail)."""
        return edge_softmax(self.attention_scores(), self.edge_head, self.n_nodes)

    @torch.no_grad()
    def update_attention(self) -> None:
        weights = self.attention()
        values = torch.zeros(self.n_pairs, dtype=weights.dtype, device=weights.device)
        values.index_add_(0, self.edge_group, weights)
        self.set_matrix(values)

    @torch.no_grad()
    def start(self) -> None:
        """The first epoch's A, before any attention: sum_r D_r^-1 A_r (each relation's neighbours of a
        head averaged, the averages summed over relations), the authors' initial `A_in` and RecBole's,
        rather than the softmax of untrained scores (about 1 / degree). docs/models/kgat.md says why."""
        self.set_matrix(self.relation_means)
        self.started.fill_(1.0)

    def set_matrix(self, values: torch.Tensor) -> None:
        """A (and its transpose) from one value per (head, tail) pair."""
        self.matrix = _csr(self.indptr, self.indices, values, self.n_nodes)
        self.transposed = _csr(self.t_indptr, self.t_indices, values[self.t_order], self.n_nodes)
        self.stale = False

    def propagate(self) -> torch.Tensor:
        """e* (n_nodes, embedding_size + sum(layer_sizes)): layer 0 and the normalised layers, joined."""
        if self.matrix is None:
            self.update_attention()
        ego = self.node.weight
        outputs = [ego]
        for layer in self.layers:
            ego = self.dropout(layer(ego, _Propagate.apply(self.matrix, self.transposed, ego)))
            outputs.append(F.normalize(ego, dim=1))
        return torch.cat(outputs, 1)

    def propagate_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """`propagate()[rows]` (up to dropout's draws): the layers before the last over every node, as the
        last reads them; in the last, the sparse product over every node (one MKL call, cheap) and the
        rest at `rows` alone. A CF batch's users and items are a few thousand of the CKG's nodes, and
        the last layer's element-wise work over every node (aggregator, dropout, normalisation, their
        backward) was most of a CF step. Gathering the rows' neighbours instead of the whole product
        was slower: a batch's users reach most of the graph's edges."""
        if self.matrix is None:
            self.update_attention()
        ego = self.node.weight
        outputs = [gather_rows(ego, rows)]
        for depth, layer in enumerate(self.layers):
            if depth < len(self.layers) - 1:
                ego = self.dropout(layer(ego, _Propagate.apply(self.matrix, self.transposed, ego)))
                outputs.append(F.normalize(gather_rows(ego, rows), dim=1))
            else:
                neighbours = gather_rows(_Propagate.apply(self.matrix, self.transposed, ego), rows)
                last = self.dropout(layer(gather_rows(ego, rows), neighbours))
                outputs.append(F.normalize(last, dim=1))
        return torch.cat(outputs, 1)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        self.update_attention()  # the paper evaluates after the epoch's attention update
        with torch.no_grad():
            final = self.propagate().to("cpu", torch.float32).numpy()
        users = final[:self.n_users].copy()
        return users, final[self.n_users:self.n_users + self.n_items].copy()


def collaborative_kg(matrix, item_entity: np.ndarray | None, kg: KnowledgeGraph | None) -> dict:
    """The CKG in node space (users, then items, then the KG's other entities): head, relation,
    tail arrays with relation 0 = interact, 1 = interacted-by, 2 + 2r = KG relation r and 3 + 2r its
    inverse; whether each tail is a user (for corrupted tails); node and relation counts."""
    coo = matrix.tocoo()
    n_users, n_items = matrix.shape
    users, items = coo.row.astype(np.int64), coo.col.astype(np.int64) + n_users
    heads, relations, tails = [users, items], [np.zeros_like(users), np.ones_like(items)], [items, users]
    n_nodes, n_relations = n_users + n_items, 2
    if kg is not None and len(kg):
        node_of = np.full(len(kg.entities), -1, dtype=np.int64)
        linked = np.flatnonzero(item_entity >= 0)
        node_of[item_entity[linked]] = n_users + linked  # an entity linked to two items keeps the last
        free = np.flatnonzero(node_of < 0)
        node_of[free] = n_nodes + np.arange(len(free))
        n_nodes += len(free)
        h, t, r = node_of[kg.head], node_of[kg.tail], np.asarray(kg.relation, dtype=np.int64)
        heads += [h, t]
        tails += [t, h]
        relations += [2 + 2 * r, 3 + 2 * r]
        n_relations += 2 * len(kg.relations)
    head, relation, tail = (np.concatenate(parts) for parts in (heads, relations, tails))
    return {"head": head, "relation": relation, "tail": tail, "tail_is_user": tail < n_users,
            "n_nodes": n_nodes, "n_relations": n_relations}


class KGAT(KnowledgeGraphInput, PropagatedFactors, TorchRecommender):
    """Attentive propagation over the collaborative knowledge graph, TransR-regularised."""

    Config = KGATConfig

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        matrix = self.sample_pairs(train, rng)
        item_entity, kg = self.knowledge(train)
        if kg is None or not len(kg):
            warnings.warn("KGAT has no knowledge graph (dataset.kg is empty and item_kg_columns is unset): "
                          "it trains on the user-item graph alone", stacklevel=3)
        graph = collaborative_kg(matrix, item_entity, kg)
        self._graph, self._rng = graph, rng
        self._module = _Net(train.n_users, train.n_items, graph["n_nodes"], graph["n_relations"],
                            graph["head"], graph["relation"], graph["tail"], self.config)
        return self._module

    def batches(self):
        """One epoch: the CF batches, then the KG batches, then (in `factors` or at the next epoch's
        start) the attention from the updated embeddings. The first epoch propagates with each
        relation's neighbours averaged (`_Net.start`)."""
        if not self._module.started.item():
            self._module.start()
        elif self._module.stale:  # else `factors` refreshed it after the last epoch's steps
            self._module.update_attention()
        for users, pos, neg in self._pairs():
            yield "cf", users, pos, neg
        g, n_users = self._graph, self._module.n_users
        n_other = g["n_nodes"] - n_users
        if self.config.kg_loss_triples == "kg":  # relation 2 + 2r: KG relation r in its given direction
            kept = np.flatnonzero((g["relation"] >= 2) & (g["relation"] % 2 == 0))
            order = kept[self._rng.permutation(len(kept))]
        else:
            order = self._rng.permutation(len(g["head"]))
        for start in range(0, len(order), self.config.kg_batch_size):
            rows = order[start:start + self.config.kg_batch_size]
            is_user = g["tail_is_user"][rows]
            corrupt = np.where(is_user, self._rng.integers(0, n_users, len(rows)),
                               n_users + self._rng.integers(0, max(n_other, 1), len(rows)))
            yield "kg", g["head"][rows], g["relation"][rows], g["tail"][rows], corrupt

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        module.stale = True
        if batch[0] == "kg":
            return self.kg_loss(module, *batch[1:])
        _, users, pos, neg = batch
        # the batch's users and items only (propagate_rows); positions into them stand for node ids
        nodes = torch.cat([users, module.n_users + pos, module.n_users + neg.reshape(-1)])
        rows, inverse = torch.unique(nodes, return_inverse=True)
        final = module.propagate_rows(rows)
        b = len(users)
        return graph_bpr_loss(final, final, inverse[:b], inverse[b:2 * b], inverse[2 * b:].view(neg.shape), 0,
                              self.config.reg)

    def kg_loss(self, module: _Net, head: torch.Tensor, relation: torch.Tensor, tail: torch.Tensor,
                corrupt: torch.Tensor) -> torch.Tensor:
        """TransR's pairwise loss: -log sigmoid(g(h, r, t') - g(h, r, t)) + kg_reg * squared norms."""
        h, r, t = module.transr(head, relation, tail)
        _, _, t_neg = module.transr(head, relation, corrupt)
        pos, neg = ((h + r - t) ** 2).sum(-1), ((h + r - t_neg) ** 2).sum(-1)
        penalty = sum((x ** 2).sum(-1) for x in (h, r, t, t_neg)).mean() / 2
        return F.softplus(pos - neg).mean() + self.config.kg_reg * penalty
