"""The contract of `recstack.testing`, run on every registered model.

Parametrised over `MODELS` and `CONTRACT_CHECKS`, so a newly registered model is covered without
editing this file. `FAST_PARAMS` holds small settings for models whose defaults are slow on a
300-user fixture (speed only; a model without an entry is checked with its defaults). Models that
read side data get it through `use_dataset` from the contract dataset's item table, as
`recstack run` hands it. `python3 dev.py test` re-runs this file with other CPU kinds' kernels.
"""

from __future__ import annotations

import pytest

from recstack.models import MODELS
from recstack.testing import CONTRACT_CHECKS, ContractCase, contract_case

pytestmark = pytest.mark.contract

FAST_PARAMS: dict[str, dict] = {
    "als": {"epochs": 5, "n_threads": 1},
    "bpr": {"epochs": 5, "learning_rate": 0.05, "batch_size": 512, "verbose": False},
    "multvae": {"epochs": 10, "hidden_size": 64, "embedding_size": 16, "batch_size": 64, "learning_rate": 3e-3,
                "anneal_steps": 50, "beta_max": 0.2, "verbose": False},
    "multdae": {"epochs": 10, "hidden_size": 64, "embedding_size": 16, "batch_size": 64, "learning_rate": 3e-3,
                "verbose": False},
    "neumf": {"epochs": 5, "learning_rate": 0.01, "batch_size": 512, "embedding_size": 16,
              "mlp_layers": [32, 16, 8], "dropout": 0.0, "verbose": False},
    "cml": {"epochs": 5, "learning_rate": 0.01, "batch_size": 512, "verbose": False},
    "relmf": {"epochs": 5, "learning_rate": 0.02, "batch_size": 512, "verbose": False},
    "naivemf": {"epochs": 5, "learning_rate": 0.02, "batch_size": 512, "verbose": False},
    "nbpo": {"epochs": 5, "learning_rate": 0.02, "batch_size": 512, "verbose": False},
    "dnis": {"search_epochs": 4, "epochs": 3, "learning_rate": 0.02, "batch_size": 512, "n_blocks": 4,
             "verbose": False},
    "dsl": {"epochs": 5, "learning_rate": 0.02, "batch_size": 512, "density": 0.3, "update_every": 5,
            "verbose": False},
    "lightgcn": {"epochs": 5, "learning_rate": 0.01, "batch_size": 512, "verbose": False},
    "ngcf": {"epochs": 5, "learning_rate": 0.01, "batch_size": 512, "n_layers": 2, "embedding_size": 32,
             "verbose": False},
    "simgcl": {"epochs": 3, "learning_rate": 0.02, "batch_size": 1024, "verbose": False},
    "dccf": {"epochs": 3, "learning_rate": 0.02, "batch_size": 2048, "embedding_size": 16, "n_intents": 8,
             "n_layers": 1, "verbose": False},
    # the fixture's dataset has no KG: its genres become (item, genres, value) triples
    "kgat": {"epochs": 3, "learning_rate": 0.01, "batch_size": 512, "embedding_size": 16, "kg_embedding_size": 16,
             "layer_sizes": [16, 8], "item_kg_columns": ["genres"], "verbose": False},
    "diffkg": {"epochs": 3, "learning_rate": 0.01, "batch_size": 512, "embedding_size": 16, "denoiser_dims": [32],
               "item_kg_columns": ["genres"], "verbose": False},
    "alpharec": {"encoder": "tfidf", "tfidf_dim": 32, "cache_embeddings": False, "epochs": 5, "learning_rate": 3e-3,
                 "batch_size": 512, "n_negatives": 16, "mlp_hidden": 64, "embedding_size": 32, "verbose": False},
    # llm "none": the item texts are the profiles (no LLM in the contract)
    "rlmrec": {"llm": "none", "encoder": "tfidf", "tfidf_dim": 32, "cache_embeddings": False, "epochs": 5,
               "learning_rate": 0.01, "batch_size": 512, "verbose": False},
    # llm "none": text stand-ins for the LLM's answers, candidates picked by text similarity
    "llmrec": {"llm": "none", "encoder": "tfidf", "tfidf_dim": 32, "cache_embeddings": False, "epochs": 5,
               "learning_rate": 0.01, "batch_size": 512, "verbose": False},
    "freedom": {"modalities": ["text", "structure"], "tfidf_dim": 32, "cache_embeddings": False, "epochs": 5,
                "learning_rate": 1e-2, "batch_size": 512, "embedding_size": 32, "edge_prune_ratio": 0.5,
                "verbose": False},
    "lirdrec": {"modalities": ["text", "structure"], "tfidf_dim": 32, "cache_embeddings": False, "epochs": 3,
                "learning_rate": 1e-2, "batch_size": 512, "embedding_size": 16, "verbose": False},
    "mmhcl": {"modalities": ["text", "structure"], "tfidf_dim": 32, "cache_embeddings": False, "epochs": 3,
              "learning_rate": 1e-2, "batch_size": 512, "embedding_size": 16, "verbose": False},
    "dgvae": {"modalities": ["text", "structure"], "tfidf_dim": 32, "cache_embeddings": False, "epochs": 5,
              "learning_rate": 1e-2, "batch_size": 64, "anneal_steps": 100, "text_anneal_steps": 100,
              "verbose": False},
    "ssl-two-tower": {"text_encoder": "tfidf", "tfidf_dim": 32, "cache_embeddings": False, "epochs": 5,
                      "learning_rate": 3e-3, "batch_size": 512, "ssl_batch_size": 128, "field_size": 16,
                      "mlp_hidden": 64, "embedding_size": 32, "verbose": False},
    "sasrec": {"epochs": 5, "embedding_size": 16, "max_seq_len": 20, "learning_rate": 5e-3, "verbose": False},
    "gru4rec": {"epochs": 5, "embedding_size": 16, "max_seq_len": 20, "learning_rate": 5e-3, "verbose": False},
    "bert4rec": {"epochs": 5, "embedding_size": 16, "max_seq_len": 20, "learning_rate": 5e-3, "verbose": False},
    "tiger": {"epochs": 4, "embedding_size": 32, "n_heads": 2, "ffn_size": 64, "n_layers": 1, "max_seq_len": 10,
              "learning_rate": 3e-3, "tokenizer": {"codebook_size": 8}, "verbose": False},
    "colarec": {"cf_params": {"epochs": 3, "learning_rate": 0.01, "batch_size": 1024}, "n_clusters": 4,
                "embedding_size": 16, "ffn_size": 32, "n_layers": 1, "dropout": 0.0, "n_user_items": 5,
                "max_items": 10, "epochs": 3, "batch_size": 512, "learning_rate": 5e-3, "n_beams": 20,
                "verbose": False},
    "adaretrieval": {"epochs": 2, "samples_per_user": 1, "learning_rate": 1e-3, "retrieval_size": 6, "n_rounds": 3,
                     "n_negatives": 20, "verbose": False,
                     "backbone_params": {"epochs": 5, "embedding_size": 16, "max_seq_len": 20, "learning_rate": 5e-3}},
    "m2trec": {"text": "none", "epochs": 10, "embedding_size": 16, "field_size": 8, "max_seq_len": 20,
               "learning_rate": 1e-2, "verbose": False},
    "mqsated": {"epochs": 5, "embedding_size": 16, "max_seq_len": 20, "learning_rate": 5e-3, "verbose": False},
    "hcn": {"epochs": 5, "embedding_size": 16, "max_seq_len": 20, "learning_rate": 5e-3, "verbose": False},
}

_CASES: dict[str, ContractCase] = {}


def case(name: str) -> ContractCase:
    """One case per model, so the checks that only read a fitted model share one fit."""
    if name not in _CASES:
        _CASES[name] = contract_case(name, FAST_PARAMS.get(name, {}))
    return _CASES[name]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("check", list(CONTRACT_CHECKS))
def test_contract(check, name):
    CONTRACT_CHECKS[check](case(name))
