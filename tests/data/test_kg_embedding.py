"""TransE entity embeddings and the "knowledge" item modality built from them."""

import numpy as np
import pytest

from recstack.data.dataset import Dataset, KnowledgeGraph
from recstack.data.interactions import Interactions, Vocab
from recstack.data.kg_embedding import TransESettings, tail_ranks, transe
from recstack.data.modalities import ModalityError, dataset_modalities, knowledge_modality
from recstack.errors import RecstackError

pytest.importorskip("torch")
N_ENTITIES, N_RELATIONS = 120, 3


def translation_kg(seed: int = 0) -> KnowledgeGraph:
    """Entities on a ring; relation r links e to e + 1 + 7r (mod n): a structure TransE can represent."""
    rng = np.random.default_rng(seed)
    heads = np.repeat(np.arange(N_ENTITIES), N_RELATIONS)
    relations = np.tile(np.arange(N_RELATIONS), N_ENTITIES)
    tails = (heads + 1 + 7 * relations) % N_ENTITIES
    keep = rng.random(len(heads)) < 0.9
    links = np.full(40, -1, dtype=np.int32)
    links[:30] = np.arange(30) * 4  # items 0..29 linked to every fourth entity, 30..39 unlinked
    return KnowledgeGraph(head=heads[keep].astype(np.int32), relation=relations[keep].astype(np.int32),
                          tail=tails[keep].astype(np.int32), entities=np.array([f"e{i}" for i in range(N_ENTITIES)],
                                                                                object),
                          relations=np.array(["a", "b", "c"], object), item_entity=links)


def kg_dataset(kg: KnowledgeGraph | None) -> Dataset:
    users, items = np.repeat(np.arange(10), 4), np.arange(40)
    inter = Interactions(users, items, Vocab(np.arange(10), "user"), Vocab(np.arange(100, 140), "item"))
    return Dataset(inter, kg=kg, provenance={"name": "ring"})


FAST = TransESettings(dim=16, epochs=60, batch_size=64, learning_rate=0.02, norm=1, seed=0)


def test_transe_learns_the_translations_of_the_ring():
    kg = translation_kg()
    entity, relation, losses = transe(kg, FAST)
    assert entity.shape == (N_ENTITIES, 16) and relation.shape == (N_RELATIONS, 16)
    np.testing.assert_allclose(np.linalg.norm(entity, axis=1), 1.0, rtol=1e-5)  # the unit-sphere constraint
    assert losses[-1] < 0.3 * losses[0]
    ranks = tail_ranks(entity, relation, kg, np.arange(len(kg)))
    # random embeddings give a mean rank near 60 and hits@10 near 8%
    assert np.mean(ranks <= 10) > 0.9 and np.median(ranks) <= 5  # trained: 0.98 and 3; one epoch: 0.14 and 43


def test_transe_is_deterministic_for_a_seed_and_refuses_bad_settings():
    kg = translation_kg()
    settings = TransESettings(dim=8, epochs=2, batch_size=64, seed=3)
    np.testing.assert_array_equal(transe(kg, settings)[0], transe(kg, settings)[0])
    assert not np.array_equal(transe(kg, settings)[0], transe(kg, TransESettings(dim=8, epochs=2, batch_size=64,
                                                                                 seed=4))[0])
    with pytest.raises(RecstackError, match="norm is 1 or 2"):
        TransESettings(norm=3)


def test_the_knowledge_modality_is_the_linked_entity_row_and_is_cached(tmp_path):
    kg = translation_kg()
    dataset = kg_dataset(kg)
    modality = knowledge_modality(dataset, FAST, cache_dir=tmp_path)
    entity, _, _ = transe(kg, FAST)
    assert modality.name == "knowledge" and modality.matrix.shape == (40, 16)
    np.testing.assert_allclose(modality.matrix[:30], entity[np.arange(30) * 4], rtol=1e-6)
    assert not modality.matrix[30:].any()  # unlinked items: zero rows
    assert modality.provenance["linked_items"] == 30 and modality.provenance["encoder"] == "TransE"
    np.testing.assert_array_equal(modality.aligned(np.array([101, 100])), modality.matrix[[1, 0]])
    cached = list(tmp_path.rglob("transe-*.npz"))
    assert len(cached) == 1
    again = knowledge_modality(dataset, FAST, cache_dir=tmp_path)  # read back, not trained again
    np.testing.assert_array_equal(again.matrix, modality.matrix)
    assert "final_loss" not in again.provenance and "final_loss" in modality.provenance


def test_a_dataset_without_a_kg_is_one_clear_error():
    with pytest.raises(ModalityError, match="has none; load one"):
        knowledge_modality(kg_dataset(None), FAST, cache=False)
    with pytest.raises(ModalityError, match="unknown modality 'knowlege'.*knowledge"):
        dataset_modalities(kg_dataset(None), ["knowlege"])
