"""The `MODELS` name table and `build`.

Names map to `"module:Class"` strings, imported on first use so that `recstack` without
torch still loads. A user's own class is accepted as `"package.module:Class"`.
"""

from __future__ import annotations

from typing import Any

from recstack.models.protocol import (
    ConfigError,
    ModelConfig,
    ModelFileError,
    NotFittedError,
    Recommender,
    SaveLoad,
    UntrustedCodeError,
    load_model,
    make_config,
)
from recstack.registry import Registry

MODELS = Registry("model", {
    "random": "recstack.models.baseline.random:Random",
    "pop": "recstack.models.baseline.pop:Pop",
    "itemknn": "recstack.models.neighborhood.itemknn:ItemKNN",
    "userknn": "recstack.models.neighborhood.userknn:UserKNN",
    "ease": "recstack.models.neighborhood.ease:EASE",
    "rp3beta": "recstack.models.neighborhood.rp3beta:RP3beta",
    "als": "recstack.models.factorization.als:ALS",
    "bpr": "recstack.models.factorization.bpr:BPR",
    "multvae": "recstack.models.factorization.multvae:MultVAE",
    "multdae": "recstack.models.factorization.multvae:MultDAE",
    "neumf": "recstack.models.factorization.neumf:NeuMF",
    "cml": "recstack.models.factorization.cml:CML",
    "relmf": "recstack.models.factorization.relmf:RelMF",
    "naivemf": "recstack.models.factorization.relmf:NaiveMF",
    "nbpo": "recstack.models.factorization.nbpo:NBPO",
    "dnis": "recstack.models.factorization.dnis:DNIS",
    "dsl": "recstack.models.factorization.dsl:DSL",
    "lightgcn": "recstack.models.graph.lightgcn:LightGCN",
    "rlmrec": "recstack.models.llm.rlmrec:RLMRec",
    "llmrec": "recstack.models.llm.llmrec:LLMRec",
    "ngcf": "recstack.models.graph.ngcf:NGCF",
    "simgcl": "recstack.models.graph.simgcl:SimGCL",
    "dccf": "recstack.models.graph.dccf:DCCF",
    "kgat": "recstack.models.graph.kgat:KGAT",
    "diffkg": "recstack.models.graph.diffkg:DiffKG",
    "alpharec": "recstack.models.content.alpharec:AlphaRec",
    "freedom": "recstack.models.content.freedom:FREEDOM",
    "lirdrec": "recstack.models.content.lirdrec:LIRDRec",
    "mmhcl": "recstack.models.content.mmhcl:MMHCL",
    "dgvae": "recstack.models.content.dgvae:DGVAE",
    "ssl-two-tower": "recstack.models.content.ssl_two_tower:SSLTwoTower",
    "sasrec": "recstack.models.sequential.sasrec:SASRec",
    "gru4rec": "recstack.models.sequential.gru4rec:GRU4Rec",
    "bert4rec": "recstack.models.sequential.bert4rec:BERT4Rec",
    "colarec": "recstack.models.generative.colarec:ColaRec",
    "tiger": "recstack.models.generative.tiger:TIGER",
    "adaretrieval": "recstack.models.sequential.adaretrieval:AdaRetrieval",
    "m2trec": "recstack.models.sequential.m2trec:M2TRec",
    "mqsated": "recstack.models.sequential.mqsated:MQSATED",
    "hcn": "recstack.models.sequential.hcn:HCN",
}, error=ConfigError)


def resolve(name: str) -> type:
    """A registered name (case-insensitive) or `"package.module:Class"` -> the class."""
    return MODELS.resolve(name)


def build(name: str, params: dict[str, Any] | None = None) -> Recommender:
    """Instantiate a model by name with validated parameters."""
    cls = resolve(name)
    return cls(make_config(cls.Config, params))


__all__ = [
    "MODELS", "ConfigError", "ModelConfig", "ModelFileError", "NotFittedError", "Recommender", "SaveLoad",
    "UntrustedCodeError",
    "build", "load_model", "make_config", "resolve",
]
