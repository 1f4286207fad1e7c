"""Entity embeddings learnt from a knowledge graph with TransE, for the item modality "knowledge"
(`recstack.data.modalities.knowledge_modality`; issue 17).

TransE (Bordes, Usunier, Garcia-Duran, Weston and Yakhnenko, "Translating Embeddings for Modeling
Multi-relational Data", NeurIPS 2013) reads a relation as a translation: h + r is close to t for a
true triple (h, r, t). It minimises the margin ranking loss

    sum over triples and their corruptions [margin + d(h + r, t) - d(h' + r, t')]_+

with d the L1 (the paper's choice on Freebase) or L2 distance and (h', r, t') the triple with its head
or its tail (each with probability 1/2) replaced by a uniformly drawn entity. As in the paper the
embeddings start uniform in +-6/sqrt(dim), the relations are L2-normalised once, and the entities
are L2-normalised before every batch, which keeps the loss from being lowered by growing the norms.
Deviation: Adam instead of plain SGD (the same fixed point, far fewer epochs on CPU).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from recstack.data.dataset import KnowledgeGraph
from recstack.errors import RecstackError


@dataclass(frozen=True)
class TransESettings:
    dim: int = 64
    epochs: int = 50
    batch_size: int = 4096
    learning_rate: float = 0.01
    margin: float = 1.0
    norm: int = 1  # 1: L1 distance (the paper on Freebase), 2: L2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1 or self.epochs < 1 or self.batch_size < 1:
            raise RecstackError(f"TransE needs dim, epochs and batch_size >= 1, got {self}")
        if self.norm not in (1, 2):
            raise RecstackError(f"TransE's distance norm is 1 or 2, got {self.norm}")
        if self.margin <= 0 or self.learning_rate <= 0:
            raise RecstackError(f"TransE's margin and learning_rate must be positive, got {self}")


def kg_fingerprint(kg: KnowledgeGraph) -> str:
    """Content hash of the triples, the vocabularies and the item links."""
    digest = hashlib.sha256()
    for array in (kg.head, kg.relation, kg.tail, kg.item_entity):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    digest.update(json.dumps([str(e) for e in kg.entities.tolist()]).encode())
    digest.update(json.dumps([str(r) for r in kg.relations.tolist()]).encode())
    return digest.hexdigest()[:24]


def settings_key(kg: KnowledgeGraph, settings: TransESettings) -> str:
    return hashlib.sha256(f"{kg_fingerprint(kg)}\0{json.dumps(asdict(settings), sort_keys=True)}".encode()
                          ).hexdigest()[:24]


def transe(kg: KnowledgeGraph, settings: TransESettings = TransESettings()
           ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Entity (n_entities, dim) and relation (n_relations, dim) embeddings, float32, and the mean
    loss per epoch. Deterministic for a seed on one machine (one thread's float order)."""
    import torch

    if len(kg) == 0:
        raise RecstackError("the knowledge graph has no triples to learn entity embeddings from")
    n_entities, n_relations = len(kg.entities), len(kg.relations)
    head = torch.as_tensor(np.asarray(kg.head, dtype=np.int64))
    relation = torch.as_tensor(np.asarray(kg.relation, dtype=np.int64))
    tail = torch.as_tensor(np.asarray(kg.tail, dtype=np.int64))
    generator = torch.Generator().manual_seed(settings.seed)
    bound = 6.0 / np.sqrt(settings.dim)
    entity = torch.empty(n_entities, settings.dim).uniform_(-bound, bound, generator=generator)
    rel = torch.empty(n_relations, settings.dim).uniform_(-bound, bound, generator=generator)
    rel = rel / rel.norm(dim=1, keepdim=True).clamp_min(1e-12)
    entity.requires_grad_(True)
    rel.requires_grad_(True)
    optimiser = torch.optim.Adam([entity, rel], lr=settings.learning_rate)
    losses: list[float] = []
    n = len(head)
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, settings.batch_size):
            batch = order[start:start + settings.batch_size]
            with torch.no_grad():  # the paper's constraint: entities on the unit sphere before each batch
                entity.div_(entity.norm(dim=1, keepdim=True).clamp_min(1e-12))
            h, r, t = head[batch], relation[batch], tail[batch]
            corrupt = torch.randint(0, n_entities, (len(batch),), generator=generator)
            replace_head = torch.rand(len(batch), generator=generator) < 0.5
            h_neg = torch.where(replace_head, corrupt, h)
            t_neg = torch.where(replace_head, t, corrupt)
            positive = (entity[h] + rel[r] - entity[t]).norm(p=settings.norm, dim=1)
            negative = (entity[h_neg] + rel[r] - entity[t_neg]).norm(p=settings.norm, dim=1)
            loss = torch.relu(settings.margin + positive - negative).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / n)
    with torch.no_grad():
        entity.div_(entity.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return entity.detach().numpy().astype(np.float32), rel.detach().numpy().astype(np.float32), losses


def tail_ranks(entity: np.ndarray, relation: np.ndarray, kg: KnowledgeGraph, rows: np.ndarray,
               norm: int = 1) -> np.ndarray:
    """The rank (1 = best) of each true tail among all entities by d(h + r, e), for the triples `rows`
    (raw ranks, other true tails not filtered): the paper's link-prediction measure, used in tests."""
    out = np.empty(len(rows), dtype=np.int64)
    for position, row in enumerate(np.asarray(rows)):
        query = entity[kg.head[row]] + relation[kg.relation[row]]
        distance = np.linalg.norm(entity - query, ord=norm, axis=1)
        out[position] = 1 + int((distance < distance[kg.tail[row]]).sum())
    return out
